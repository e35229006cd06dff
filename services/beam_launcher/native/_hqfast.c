/*
 * _hqfast: the Hyperquack parse + classify path in C (plain CPython C-API).
 *
 * One call per batch: process_batch(lines, first_line_no, ctx) -> (rows, slow, counts),
 * or its columnar twin process_batch_columns(lines, first_line_no, ctx) -> (columns, slow,
 * slow_at, counts), which writes each value straight into a list per column of COLUMNS
 * (no row dict is built; see the end of this file), or process_batch_arrow, the same with
 * the simple columns written as Arrow buffers instead of lists (COLUMN_KINDS, "Arrow
 * columns" below).
 *
 * Each line is decoded with the orjson.loads given in ctx. A record of the ordinary,
 * well-formed shape is flattened and annotated here; the rows are exactly the dicts
 * services/beam_launcher/hyperquack/processing.py (the pure-Python reference) builds for it. Any
 * other line (invalid JSON, unexpected types, missing keys, unusual timestamps or v1
 * "Sent" texts, a Python callback raising, ...) gets a None placeholder in rows and its
 * index in slow: the Python caller processes it with the reference code and splices its
 * rows (or dead letter) in at the placeholder. Nothing is ever decided here that the
 * reference would decide differently: when in doubt, a line goes to the slow path.
 *
 * ctx is a tuple built by HyperquackProcessor._native_context (order fixed below):
 *   0 loads            orjson.loads
 *   1 template         dict: every column -> None (copied per row)
 *   2 control_domains  frozenset of v1 control domains
 *   3 category_fn      DomainCategories.category(domain, is_control)
 *   4 cat_cache        dict domain -> category (tests)
 *   5 ctl_cache        dict domain -> category (controls)
 *   6 page_cache       dict text_hash(page) -> (page, (is_known_blockpage, signature id) | None)
 *   7 page_fn          callable(text) -> (bool, str) | None
 *   8 cert_fn          processing.cert_columns(cert_raw, domain) -> 6-tuple | None
 *   9 classify_fn      RuleSet.classify_features(key, scan_type) -> (outcome, rule id)
 *  10 trusted_headers  frozenset of header lines trusted_host rules look for
 *  11 rules_version    str
 *  12 cache_limit      int: a cache dict is emptied when it reaches this many entries
 *  13 outcome_cache    dict feature key -> (outcome, rule id), for this scan type
 *  14 scan_type        str
 *  15 digest           str: 24 hex characters (file_digest of source/source_file)
 *  16 source           str
 *  17 source_file      str
 *  18 pipeline_version str
 *
 * counts = (lines, rows, blank_lines, ok_lines, records_without_roundtrips,
 *           cert_parse_errors), all for the lines handled here (slow lines excluded).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define HQ_OK 0
#define HQ_SLOW 1
#define HQ_ERR (-1)

#define CTX_ITEMS 19

/* The page cache holds the texts themselves (to check equality): bound its memory. */
#define PAGE_CACHE_ENTRIES 1024
#define PAGE_CACHE_MAX_CHARS (256 * 1024)

/* Interned strings: record keys and row columns. */
#define KEYS(X)                                                                            \
    X(Server) X(Keyword) X(Results) X(Retries) X(Blocked) X(FailSanity) X(StatefulBlock)    \
    X(Sent) X(StartTime) X(EndTime) X(Error) X(Success) X(Received) X(vp) X(test_url)       \
    X(response) X(anomaly) X(controls_failed) X(stateful_block) X(control_url)              \
    X(start_time) X(end_time) X(error) X(matches_template) X(status_line) X(headers)        \
    X(body) X(tls) X(version) X(cipher_suite) X(cert) X(TlsVersion) X(CipherSuite)          \
    X(Certificate) X(server_ip) X(measurement_id) X(source) X(source_file) X(source_line)   \
    X(pipeline_version) X(domain) X(domain_is_control) X(date) X(retry) X(received_error)  \
    X(no_response_in_measurement_matches_template) X(received_status) X(received_headers)  \
    X(received_body) X(received_tls_version) X(received_tls_cipher_suite)                   \
    X(domain_category) X(is_known_blockpage) X(page_signature) X(received_tls_cert)         \
    X(received_tls_cert_common_name) X(received_tls_cert_issuer)                            \
    X(received_tls_cert_alternative_names) X(received_tls_cert_matches_domain) X(outcome)   \
    X(outcome_rule_id) X(outcome_rules_version)

#define DECLARE_KEY(name) static PyObject *K_##name;
KEYS(DECLARE_KEY)
#undef DECLARE_KEY

static PyObject *S_empty; /* "" */
static PyObject *S_crlf;  /* "\r\n" */

/*
 * The columns a row sets beyond the batch template (see commit_row). A row is a copy of
 * the previous row of the batch, with only the columns whose value differs stored again.
 */
enum {
    C_server_ip, C_measurement_id, C_source_line, C_anomaly, C_controls_failed, C_stateful,
    C_domain, C_is_control, C_category, C_date, C_start, C_end, C_retry, C_error, C_matches,
    C_status, C_headers, C_body, C_tls_version, C_tls_cipher, C_cert, C_cert_cn,
    C_cert_issuer, C_cert_alt, C_cert_match, C_known, C_signature, C_outcome, C_rule_id,
    NCOL
};

static PyObject *COLK[NCOL]; /* the column names (interned), filled at import */

/* Recent outcome feature keys, matched without building the key tuple. */
#define RING 8

typedef struct {
    PyObject *loads, *template, *control_domains, *category_fn, *cat_cache, *ctl_cache;
    PyObject *page_cache, *page_fn, *cert_fn, *classify_fn, *trusted_headers;
    PyObject *rules_version, *outcome_cache, *scan_type, *digest, *source, *source_file;
    PyObject *pipeline_version;
    Py_ssize_t cache_limit;
    Py_ssize_t cert_errors; /* of the line being processed */
    PyObject *last_date;    /* owned: reused when consecutive rows share a date */
    PyObject *batch_tpl;    /* owned: template + the columns equal for the whole batch */
    PyObject *prev_row[2];  /* owned: the previous test [0] / control [1] row, or NULL ... */
    PyObject *prev[2][NCOL]; /* ... its column values (borrowed from it, or batch_tpl) */
    PyObject *tplv[NCOL];   /* borrowed from batch_tpl: its values of the COLUMNS */
    PyObject **cols;        /* columnar mode: NCOL lists (borrowed), else NULL (rows) */
    struct ACol *acols;     /* Arrow mode: NCOL builders (those of list columns unused) */
    int fatal;              /* a builder failed (no memory, offsets overflow): stop */
    PyObject *ring_key[RING]; /* owned: recent outcome feature keys ... */
    PyObject *ring_res[RING]; /* owned: ... and their (outcome, rule id) */
    int ring_n, ring_pos;
    PyObject *sent_dom;     /* owned: the last domain taken from a v1 Sent ... */
    int sent_dom_ctl;       /* ... and whether it is a control domain */
    PyObject *cat_dom;      /* owned: the last domain categorised ... */
    int cat_ctl;            /* ... as a control or not ... */
    PyObject *cat_val;      /* owned: ... and its category */
    PyObject *pg_text;      /* owned: the last page text looked up ... */
    PyObject *pg_match;     /* owned: ... and its signature match */
} Ctx;

typedef struct {
    PyObject *server;          /* borrowed */
    PyObject *mid;             /* owned */
    PyObject *line_no;         /* owned */
    PyObject *anomaly;         /* borrowed: None, True or False */
    PyObject *controls_failed; /* borrowed */
    PyObject *stateful;        /* borrowed */
} Record;

typedef struct {
    PyObject *status;   /* borrowed; NULL means None */
    PyObject *headers;  /* owned list; NULL means not set (None) */
    PyObject *body;     /* borrowed; NULL means None */
    PyObject *cert_raw; /* borrowed; NULL means None */
} Received;

/* ---- small helpers ------------------------------------------------------------------ */

/* d[k] borrowed, or NULL when absent (*err set when the lookup itself failed). */
static inline PyObject *
get(PyObject *d, PyObject *k, int *err)
{
    PyObject *v = PyDict_GetItemWithError(d, k);
    if (v == NULL && PyErr_Occurred()) {
        *err = 1;
    }
    return v;
}

#define GET(var, d, k)                  \
    do {                                \
        int _e = 0;                     \
        (var) = get((d), (k), &_e);     \
        if (_e) {                       \
            return HQ_ERR;               \
        }                               \
    } while (0)

/* The value v (NULL when absent) as None / bool (opt_bool without the lookup). */
static inline int
opt_bool_v(PyObject *v, PyObject **out)
{
    if (v == NULL || v == Py_None) {
        *out = Py_None;
        return HQ_OK;
    }
    if (v == Py_True || v == Py_False) {
        *out = v;
        return HQ_OK;
    }
    return HQ_SLOW;
}

/* The value v (NULL when absent) as None / str (opt_str without the lookup). */
static inline int
opt_str_v(PyObject *v, PyObject **out)
{
    if (v == NULL || v == Py_None) {
        *out = Py_None;
        return HQ_OK;
    }
    if (PyUnicode_CheckExact(v)) {
        *out = v;
        return HQ_OK;
    }
    return HQ_SLOW;
}

/*
 * One pass over dict d: out[j] = d[keys[j]] (borrowed) or NULL when absent, for the
 * nkeys interned ASCII keys (the same as nkeys lookups, for a fraction of the cost: the
 * decoded dicts have few keys). A key is recognised by identity with keys[j] or with
 * seen[j] (an owned reference to the last key object found equal to keys[j]: orjson
 * reuses its key objects, so this is the usual case), else by length and bytes. The
 * search starts after the previous match (the keys usually come in the order of keys).
 * Other keys are ignored as a lookup would; a key that is not an exact str makes the
 * line HQ_SLOW.
 */
static int
walk(PyObject *d, PyObject *const *keys, PyObject **seen, int nkeys, PyObject **out)
{
    for (int j = 0; j < nkeys; j++) {
        out[j] = NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    int next = 0;
    while (PyDict_Next(d, &pos, &k, &v)) {
        int m = -1;
        for (int t = 0, j = next; t < nkeys; t++, j = j + 1 == nkeys ? 0 : j + 1) {
            if (seen[j] == k || keys[j] == k) {
                m = j;
                break;
            }
        }
        if (m < 0) {
            if (!PyUnicode_CheckExact(k)) {
                return HQ_SLOW;
            }
            if (!PyUnicode_IS_ASCII(k)) {
                continue;
            }
            Py_ssize_t n = PyUnicode_GET_LENGTH(k);
            const char *kd = (const char *)PyUnicode_1BYTE_DATA(k);
            for (int j = 0; j < nkeys; j++) {
                if (PyUnicode_GET_LENGTH(keys[j]) == n &&
                    memcmp(PyUnicode_1BYTE_DATA(keys[j]), kd, (size_t)n) == 0) {
                    m = j;
                    Py_INCREF(k);
                    Py_XSETREF(seen[j], k);
                    break;
                }
            }
            if (m < 0) {
                continue;
            }
        }
        out[m] = v;
        next = m + 1 == nkeys ? 0 : m + 1;
    }
    return HQ_OK;
}

/* An optional int64 value (hyperquack._opt_int); NULL and None are fine. */
static inline int
check_opt_int(PyObject *v)
{
    if (v == NULL || v == Py_None) {
        return HQ_OK;
    }
    if (!PyLong_CheckExact(v)) {
        return HQ_SLOW;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        return HQ_ERR;
    }
    return overflow ? HQ_SLOW : HQ_OK;
}

/* A new ASCII str made of two byte ranges (both ASCII). */
static PyObject *
ascii2(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb)
{
    PyObject *s = PyUnicode_New(na + nb, 127);
    if (s == NULL) {
        return NULL;
    }
    char *p = (char *)PyUnicode_1BYTE_DATA(s);
    memcpy(p, a, (size_t)na);
    memcpy(p + na, b, (size_t)nb);
    return s;
}

/* a + sep + b for three str objects (any kinds). */
static PyObject *
concat3(PyObject *a, PyObject *sep, PyObject *b)
{
    Py_ssize_t na = PyUnicode_GET_LENGTH(a), ns = PyUnicode_GET_LENGTH(sep);
    Py_ssize_t nb = PyUnicode_GET_LENGTH(b);
    if (na > PY_SSIZE_T_MAX - ns - nb) {
        PyErr_NoMemory();
        return NULL;
    }
    if (PyUnicode_IS_ASCII(a) && PyUnicode_IS_ASCII(sep) && PyUnicode_IS_ASCII(b)) {
        PyObject *s = PyUnicode_New(na + ns + nb, 127);
        if (s == NULL) {
            return NULL;
        }
        char *p = (char *)PyUnicode_1BYTE_DATA(s);
        memcpy(p, PyUnicode_1BYTE_DATA(a), (size_t)na);
        memcpy(p + na, PyUnicode_1BYTE_DATA(sep), (size_t)ns);
        memcpy(p + na + ns, PyUnicode_1BYTE_DATA(b), (size_t)nb);
        return s;
    }
    Py_UCS4 maxc = PyUnicode_MAX_CHAR_VALUE(a);
    if (PyUnicode_MAX_CHAR_VALUE(sep) > maxc) {
        maxc = PyUnicode_MAX_CHAR_VALUE(sep);
    }
    if (PyUnicode_MAX_CHAR_VALUE(b) > maxc) {
        maxc = PyUnicode_MAX_CHAR_VALUE(b);
    }
    PyObject *s = PyUnicode_New(na + ns + nb, maxc);
    if (s == NULL) {
        return NULL;
    }
    if (PyUnicode_CopyCharacters(s, 0, a, 0, na) < 0 ||
        PyUnicode_CopyCharacters(s, na, sep, 0, ns) < 0 ||
        PyUnicode_CopyCharacters(s, na + ns, b, 0, nb) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

/* Store into a bounded cache dict (emptied when full). */
static int
cache_put(Ctx *c, PyObject *cache, PyObject *key, PyObject *value)
{
    if (PyDict_GET_SIZE(cache) >= c->cache_limit) {
        PyDict_Clear(cache);
    }
    return PyDict_SetItem(cache, key, value);
}

/* ---- timestamps (hyperquack.normalize_timestamp, fixed layout only) -------------------- */

static inline int
is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static inline int
two(const char *s)
{
    return (s[0] - '0') * 10 + (s[1] - '0');
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) {
        return 29;
    }
    return days[month - 1];
}

/*
 * YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM) with valid ranges → (*date, *out) new refs
 * (date may be NULL: not wanted). Anything else is HQ_SLOW: the reference decides (it
 * may still accept it, or reject it).
 */
static int
norm_ts(Ctx *c, PyObject *v, PyObject **date, PyObject **out)
{
    if (v == NULL || !PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) {
        return HQ_SLOW;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    const char *s = (const char *)PyUnicode_1BYTE_DATA(v);
    Py_ssize_t body;
    if (n < 20) {
        return HQ_SLOW;
    }
    if (s[n - 1] == 'Z') {
        body = n - 1;
    }
    else if (n >= 25 && (s[n - 6] == '+' || s[n - 6] == '-') && s[n - 3] == ':' &&
             is_digit(s[n - 5]) && is_digit(s[n - 4]) && is_digit(s[n - 2]) &&
             is_digit(s[n - 1])) {
        if (two(s + n - 5) > 23 || two(s + n - 2) > 59) {
            return HQ_SLOW;
        }
        body = n - 6;
    }
    else {
        return HQ_SLOW;
    }
    if (!(body == 19 || (body >= 21 && body <= 29 && s[19] == '.'))) {
        return HQ_SLOW;
    }
    /* THH:MM:SS[.fff] */
    if (s[10] != 'T' || s[13] != ':' || s[16] != ':' || !is_digit(s[11]) || !is_digit(s[12]) ||
        !is_digit(s[14]) || !is_digit(s[15]) || !is_digit(s[17]) || !is_digit(s[18]) ||
        two(s + 11) > 23 || two(s + 14) > 59 || two(s + 17) > 59) {
        return HQ_SLOW;
    }
    for (Py_ssize_t i = 20; i < body; i++) {
        if (!is_digit(s[i])) {
            return HQ_SLOW;
        }
    }
    /* YYYY-MM-DD: the previous row's (already checked) when equal (common in a batch) */
    PyObject *d = c->last_date;
    if (d == NULL || memcmp(PyUnicode_1BYTE_DATA(d), s, 10) != 0) {
        static const char layout[] = "dddd-dd-dd";
        for (int i = 0; i < 10; i++) {
            if (layout[i] == 'd' ? !is_digit(s[i]) : s[i] != layout[i]) {
                return HQ_SLOW;
            }
        }
        int year = two(s) * 100 + two(s + 2), month = two(s + 5), day = two(s + 8);
        if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month)) {
            return HQ_SLOW;
        }
        d = PyUnicode_New(10, 127);
        if (d == NULL) {
            return HQ_ERR;
        }
        memcpy(PyUnicode_1BYTE_DATA(d), s, 10);
        Py_XSETREF(c->last_date, d);
    }
    if (body <= 26) { /* at most 6 fraction digits: the value is already normalised */
        Py_INCREF(v);
        *out = v;
    }
    else {
        Py_ssize_t tz = n - body;
        PyObject *o = PyUnicode_New(26 + tz, 127);
        if (o == NULL) {
            return HQ_ERR;
        }
        char *p = (char *)PyUnicode_1BYTE_DATA(o);
        memcpy(p, s, 26);
        for (Py_ssize_t i = 0; i < tz; i++) {
            p[26 + i] = s[body + i];
        }
        *out = o;
    }
    if (date != NULL) {
        Py_INCREF(d);
        *date = d;
    }
    return HQ_OK;
}

/* ---- v1 Sent → domain (hyperquack.domain_from_sent) ---------------------------------- */

/*
 * The usual shape "GET <path> HTTP/1.1\r\nHost: <host>\r\n..." matched at position 0, or
 * a text without a space (returned as is). Other texts are HQ_SLOW: the regex search may
 * still find a match further on, or none.
 */
static int
domain_from_sent(PyObject *sent, PyObject *prev, PyObject **out)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(sent);
    if (PyUnicode_KIND(sent) != PyUnicode_1BYTE_KIND) {
        Py_ssize_t sp = PyUnicode_FindChar(sent, ' ', 0, n, 1);
        if (sp == -2) {
            return HQ_ERR;
        }
        if (sp >= 0) {
            return HQ_SLOW;
        }
        Py_INCREF(sent);
        *out = sent;
        return HQ_OK;
    }
    const char *s = (const char *)PyUnicode_1BYTE_DATA(sent);
    if (memchr(s, ' ', (size_t)n) == NULL) {
        Py_INCREF(sent);
        *out = sent;
        return HQ_OK;
    }
    if (n < 4 || memcmp(s, "GET ", 4) != 0) {
        return HQ_SLOW;
    }
    const char *nl = memchr(s, '\n', (size_t)n);
    if (nl == NULL) {
        return HQ_SLOW;
    }
    Py_ssize_t p = nl - s; /* the first newline: '.' never matches one */
    if (p - 10 < 4 || memcmp(s + p - 10, " HTTP/1.1\r", 10) != 0) {
        return HQ_SLOW;
    }
    Py_ssize_t g1s = 4, g1e = p - 10, g2s = p + 7;
    if (n < g2s || memcmp(s + p + 1, "Host: ", 6) != 0) {
        return HQ_SLOW;
    }
    const char *nl2 = memchr(s + g2s, '\n', (size_t)(n - g2s));
    if (nl2 == NULL) {
        return HQ_SLOW;
    }
    Py_ssize_t q = nl2 - s;
    if (q - 1 < g2s || s[q - 1] != '\r') {
        return HQ_SLOW;
    }
    Py_ssize_t g2e = q - 1;
    /* path = s[g1s:g1e], host = s[g2s:g2e]; swapped when the host starts with "/" */
    Py_ssize_t ps = g1s, pe = g1e, hs = g2s, he = g2e;
    if (he > hs && s[hs] == '/') {
        ps = g2s;
        pe = g2e;
        hs = g1s;
        he = g1e;
    }
    if (pe - ps == 1 && s[ps] == '/') {
        ps = pe; /* the domain is the host alone */
    }
    /* the previous domain, when equal (same kind: 1-byte, same code points) */
    if (prev != NULL && PyUnicode_KIND(prev) == PyUnicode_1BYTE_KIND &&
        PyUnicode_GET_LENGTH(prev) == (he - hs) + (pe - ps)) {
        const char *d = (const char *)PyUnicode_1BYTE_DATA(prev);
        if (memcmp(d, s + hs, (size_t)(he - hs)) == 0 &&
            memcmp(d + (he - hs), s + ps, (size_t)(pe - ps)) == 0) {
            Py_INCREF(prev);
            *out = prev;
            return HQ_OK;
        }
    }
    if (pe == ps) {
        *out = PyUnicode_Substring(sent, hs, he);
    }
    else {
        PyObject *host = PyUnicode_Substring(sent, hs, he);
        if (host == NULL) {
            return HQ_ERR;
        }
        PyObject *path = PyUnicode_Substring(sent, ps, pe);
        if (path == NULL) {
            Py_DECREF(host);
            return HQ_ERR;
        }
        *out = PyUnicode_Concat(host, path);
        Py_DECREF(host);
        Py_DECREF(path);
    }
    return *out == NULL ? HQ_ERR : HQ_OK;
}

/* ---- received fields (hyperquack._received_fields) ------------------------------------ */

static int
flatten_headers(PyObject *headers, PyObject **out)
{
    PyObject *flat = PyList_New(0);
    if (flat == NULL) {
        return HQ_ERR;
    }
    Py_ssize_t pos = 0;
    PyObject *name, *values;
    static PyObject *sep = NULL;
    if (sep == NULL) {
        sep = PyUnicode_InternFromString(": ");
        if (sep == NULL) {
            Py_DECREF(flat);
            return HQ_ERR;
        }
    }
    while (PyDict_Next(headers, &pos, &name, &values)) {
        if (!PyUnicode_CheckExact(name)) {
            Py_DECREF(flat);
            return HQ_SLOW;
        }
        if (PyUnicode_CheckExact(values)) {
            PyObject *h = concat3(name, sep, values);
            if (h == NULL || PyList_Append(flat, h) < 0) {
                Py_XDECREF(h);
                Py_DECREF(flat);
                return HQ_ERR;
            }
            Py_DECREF(h);
            continue;
        }
        if (!PyList_CheckExact(values)) {
            Py_DECREF(flat);
            return HQ_SLOW;
        }
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(values); j++) {
            PyObject *v = PyList_GET_ITEM(values, j);
            if (!PyUnicode_CheckExact(v)) {
                Py_DECREF(flat);
                return HQ_SLOW;
            }
            PyObject *h = concat3(name, sep, v);
            if (h == NULL || PyList_Append(flat, h) < 0) {
                Py_XDECREF(h);
                Py_DECREF(flat);
                return HQ_ERR;
            }
            Py_DECREF(h);
        }
    }
    *out = flat;
    return HQ_OK;
}

/* w[i] = v (a new reference; v borrowed). */
static inline void
want(PyObject **w, int i, PyObject *v)
{
    Py_INCREF(v);
    Py_XSETREF(w[i], v);
}

/* The received_* values of a v1 Received / v2 response value, into w. */
static int
received_fields(PyObject **w, PyObject *received, Received *rv)
{
    int r;
    if (received == Py_None) {
        return HQ_OK;
    }
    if (PyUnicode_CheckExact(received)) {
        rv->status = received;
        want(w, C_status, received);
        return HQ_OK;
    }
    if (!PyDict_CheckExact(received)) {
        return HQ_SLOW;
    }
    PyObject *status, *headers, *body, *tls;
    GET(status, received, K_status_line);
    if (status != NULL && status != Py_None) {
        if (!PyUnicode_CheckExact(status)) {
            return HQ_SLOW;
        }
        rv->status = status;
        want(w, C_status, status);
    }
    GET(headers, received, K_headers);
    if (headers != NULL && headers != Py_None) {
        if (!PyDict_CheckExact(headers)) {
            return HQ_SLOW;
        }
        r = flatten_headers(headers, &rv->headers);
        if (r != HQ_OK) {
            return r;
        }
        want(w, C_headers, rv->headers);
    }
    GET(body, received, K_body);
    if (body != NULL && body != Py_None) {
        if (!PyUnicode_CheckExact(body)) {
            return HQ_SLOW;
        }
        rv->body = body;
        want(w, C_body, body);
    }
    GET(tls, received, K_tls);
    PyObject *version, *cipher, *cert;
    if (tls != NULL && tls != Py_None) {
        if (!PyDict_CheckExact(tls)) {
            return HQ_SLOW;
        }
        GET(version, tls, K_version);
        GET(cipher, tls, K_cipher_suite);
        GET(cert, tls, K_cert);
    }
    else {
        GET(version, received, K_TlsVersion);
        GET(cipher, received, K_CipherSuite);
        GET(cert, received, K_Certificate);
    }
    if ((r = check_opt_int(version)) != HQ_OK || (r = check_opt_int(cipher)) != HQ_OK) {
        return r;
    }
    if (version != NULL && version != Py_None) {
        want(w, C_tls_version, version);
    }
    if (cipher != NULL && cipher != Py_None) {
        want(w, C_tls_cipher, cipher);
    }
    rv->cert_raw = cert;
    return HQ_OK;
}

/* ---- annotation (HyperquackProcessor.annotate) ---------------------------------------- */

/* processing.page_text; new ref, or NULL with *none set when the text is None. */
static PyObject *
page_text(Received *rv, int *none)
{
    *none = 0;
    if (rv->headers == NULL && rv->body == NULL) {
        if (rv->status == NULL) {
            *none = 1;
            return NULL;
        }
        Py_INCREF(rv->status);
        return rv->status;
    }
    Py_ssize_t nh = rv->headers == NULL ? 0 : PyList_GET_SIZE(rv->headers);
    PyObject *parts = PyList_New(4 + 2 * nh);
    if (parts == NULL) {
        return NULL;
    }
    Py_ssize_t k = 0;
#define PUT(obj)                                  \
    do {                                          \
        PyObject *_o = (obj);                     \
        Py_INCREF(_o);                            \
        PyList_SET_ITEM(parts, k, _o);            \
        k++;                                      \
    } while (0)
    PUT(rv->status != NULL ? rv->status : S_empty);
    PUT(S_crlf);
    for (Py_ssize_t j = 0; j < nh; j++) {
        PUT(PyList_GET_ITEM(rv->headers, j));
        PUT(S_crlf);
    }
    PUT(S_crlf);
    PUT(rv->body != NULL ? rv->body : S_empty);
#undef PUT
    PyObject *text = PyUnicode_Join(S_empty, parts);
    Py_DECREF(parts);
    return text;
}

/*
 * A fast 64-bit hash of a str's code units (pages can be tens of KiB: SipHash, which
 * a dict lookup by the text would use, costs several times more). Only used to find a
 * candidate in the page cache; equality of the texts is always checked.
 */
static uint64_t
text_hash(PyObject *text)
{
    const unsigned char *p = (const unsigned char *)PyUnicode_DATA(text);
    size_t n = (size_t)PyUnicode_GET_LENGTH(text) * PyUnicode_KIND(text);
    const uint64_t m = 0x9E3779B97F4A7C15ULL;
    uint64_t a = 0x243F6A8885A308D3ULL ^ n, b = 0x13198A2E03707344ULL, c = 0xA4093822299F31D0ULL,
             d = 0x082EFA98EC4E6C89ULL ^ (uint64_t)PyUnicode_KIND(text);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + i + 8, 8);
        memcpy(&w2, p + i + 16, 8);
        memcpy(&w3, p + i + 24, 8);
        a = (a ^ w0) * m;
        b = (b ^ w1) * m;
        c = (c ^ w2) * m;
        d = (d ^ w3) * m;
        a ^= a >> 31;
        b ^= b >> 29;
        c ^= c >> 27;
        d ^= d >> 25;
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        a = (a ^ w) * m;
        a ^= a >> 31;
    }
    uint64_t tail = 0;
    for (size_t j = 0; i + j < n; j++) {
        tail |= (uint64_t)p[i + j] << (8 * j);
    }
    b = (b ^ tail) * m;
    uint64_t h = a ^ (b << 1) ^ (c << 2) ^ (d << 3);
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    return h;
}

/*
 * The signature match of a page text, memoised: page_cache maps text_hash (an int) to
 * (text, result); a hash collision with another text just calls page_fn (uncached).
 * Returns a new ref to result (None or (is_known_blockpage, signature id)).
 */
static PyObject *
page_lookup(Ctx *c, PyObject *text)
{
    PyObject *key = PyLong_FromUnsignedLongLong(text_hash(text));
    if (key == NULL) {
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(c->page_cache, key);
    if (entry != NULL) {
        if (PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2) {
            PyObject *cached = PyTuple_GET_ITEM(entry, 0);
            int same = cached == text;
            if (!same) {
                same = PyUnicode_Compare(cached, text) == 0;
                if (same == 0 && PyErr_Occurred()) {
                    Py_DECREF(key);
                    return NULL;
                }
            }
            if (same) {
                PyObject *result = PyTuple_GET_ITEM(entry, 1);
                Py_INCREF(result);
                Py_DECREF(key);
                return result;
            }
        }
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(c->page_fn, text);
    if (result == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (result != Py_None && (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 2)) {
        PyErr_SetString(PyExc_TypeError, "page_fn must return a 2-tuple or None");
        Py_DECREF(result);
        Py_DECREF(key);
        return NULL;
    }
    if (entry == NULL && PyUnicode_GET_LENGTH(text) <= PAGE_CACHE_MAX_CHARS) {
        if (PyDict_GET_SIZE(c->page_cache) >= PAGE_CACHE_ENTRIES) {
            PyDict_Clear(c->page_cache);
        }
        PyObject *pair = PyTuple_Pack(2, text, result);
        if (pair == NULL || PyDict_SetItem(c->page_cache, key, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(result);
            Py_DECREF(key);
            return NULL;
        }
        Py_DECREF(pair);
    }
    Py_DECREF(key);
    return result;
}

/* Identity, or two str objects with equal contents (no hashing). */
static inline int
same_value(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

/* Does str k equal s[:n] (same kind)? A narrower kind of k is reported as different. */
static inline int
prefix_eq(PyObject *k, PyObject *s, Py_ssize_t n)
{
    if (!PyUnicode_CheckExact(k) || PyUnicode_GET_LENGTH(k) != n) {
        return 0;
    }
    if (n == 0) {
        return 1;
    }
    int kind = PyUnicode_KIND(k);
    return kind == PyUnicode_KIND(s) &&
           memcmp(PyUnicode_DATA(k), PyUnicode_DATA(s), (size_t)n * (size_t)kind) == 0;
}

/*
 * Whether key (a cached RuleSet.feature_key tuple) is the key of these features:
 * (error[:cut] or None when cut < 0, mismatch, known, signature, found[:nfound],
 * status[:n3]). Only ever a fast check: a false "no" just builds the key.
 */
static inline int
key_matches(PyObject *key, PyObject *error, Py_ssize_t cut, PyObject *mismatch,
            PyObject *known, PyObject *signature, PyObject **found, Py_ssize_t nfound,
            PyObject *status, Py_ssize_t n3)
{
    if (PyTuple_GET_ITEM(key, 1) != mismatch || !same_value(PyTuple_GET_ITEM(key, 2), known) ||
        !same_value(PyTuple_GET_ITEM(key, 3), signature)) {
        return 0;
    }
    PyObject *k0 = PyTuple_GET_ITEM(key, 0);
    if (cut < 0 ? k0 != Py_None : !prefix_eq(k0, error, cut)) {
        return 0;
    }
    PyObject *k4 = PyTuple_GET_ITEM(key, 4);
    if (!PyTuple_CheckExact(k4) || PyTuple_GET_SIZE(k4) != nfound) {
        return 0;
    }
    for (Py_ssize_t j = 0; j < nfound; j++) {
        if (!same_value(PyTuple_GET_ITEM(k4, j), found[j])) {
            return 0;
        }
    }
    return prefix_eq(PyTuple_GET_ITEM(key, 5), status, n3);
}

/* The outcome (RuleSet.feature_key → cached classify_features) → w. */
static int
outcome(Ctx *c, PyObject **w, PyObject *error, PyObject *matches, PyObject *known,
        PyObject *signature, Received *rv)
{
    /* first error: error[:cut] (cut < 0: None) */
    Py_ssize_t cut = -1;
    if (error != Py_None) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(error);
        if (n > 0) {
            if (PyUnicode_KIND(error) == PyUnicode_1BYTE_KIND) {
                const char *e = (const char *)PyUnicode_1BYTE_DATA(error);
                const char *semi = memchr(e, ';', (size_t)n);
                cut = semi == NULL ? n : semi - e;
            }
            else {
                cut = PyUnicode_FindChar(error, ';', 0, n, 1);
                if (cut == -2) {
                    return HQ_ERR;
                }
                if (cut < 0) {
                    cut = n;
                }
            }
        }
    }
    Py_ssize_t nmatch = 0;
    PyObject *found[8];
    if (rv->headers != NULL && PySet_GET_SIZE(c->trusted_headers) > 0) {
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(rv->headers); j++) {
            PyObject *h = PyList_GET_ITEM(rv->headers, j);
            int hit = PySet_Contains(c->trusted_headers, h);
            if (hit < 0) {
                return HQ_ERR;
            }
            if (hit) {
                if (nmatch == 8) { /* implausible: let the reference handle it */
                    return HQ_SLOW;
                }
                found[nmatch++] = h;
            }
        }
    }
    PyObject *status = rv->status == NULL ? S_empty : rv->status;
    Py_ssize_t n3 = PyUnicode_GET_LENGTH(status);
    if (n3 > 3) {
        n3 = 3;
    }
    PyObject *mismatch = matches == Py_False ? Py_True : Py_False;
    /* recent keys first (the features repeat: rows of a record, records of a scan) */
    for (int j = 0; j < c->ring_n; j++) {
        if (key_matches(c->ring_key[j], error, cut, mismatch, known, signature, found, nmatch,
                        status, n3)) {
            PyObject *res = c->ring_res[j];
            want(w, C_outcome, PyTuple_GET_ITEM(res, 0));
            want(w, C_rule_id, PyTuple_GET_ITEM(res, 1));
            return HQ_OK;
        }
    }
    PyObject *first_error, *trusted, *status3, *key;
    if (cut < 0) {
        first_error = Py_None;
        Py_INCREF(first_error);
    }
    else if (cut == PyUnicode_GET_LENGTH(error)) {
        first_error = error;
        Py_INCREF(first_error);
    }
    else if ((first_error = PyUnicode_Substring(error, 0, cut)) == NULL) {
        return HQ_ERR;
    }
    trusted = PyTuple_New(nmatch);
    if (trusted == NULL) {
        Py_DECREF(first_error);
        return HQ_ERR;
    }
    for (Py_ssize_t j = 0; j < nmatch; j++) {
        Py_INCREF(found[j]);
        PyTuple_SET_ITEM(trusted, j, found[j]);
    }
    if (n3 == PyUnicode_GET_LENGTH(status)) {
        status3 = status;
        Py_INCREF(status3);
    }
    else if ((status3 = PyUnicode_Substring(status, 0, 3)) == NULL) {
        Py_DECREF(first_error);
        Py_DECREF(trusted);
        return HQ_ERR;
    }
    key = PyTuple_Pack(6, first_error, mismatch, known, signature, trusted, status3);
    Py_DECREF(first_error);
    Py_DECREF(trusted);
    Py_DECREF(status3);
    if (key == NULL) {
        return HQ_ERR;
    }
    PyObject *result = PyDict_GetItemWithError(c->outcome_cache, key);
    if (result != NULL) {
        Py_INCREF(result);
    }
    else {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return HQ_ERR;
        }
        result = PyObject_CallFunctionObjArgs(c->classify_fn, key, c->scan_type, NULL);
        if (result == NULL) {
            Py_DECREF(key);
            return HQ_ERR;
        }
        if (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 2 ||
            cache_put(c, c->outcome_cache, key, result) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "classify_fn must return a 2-tuple");
            }
            Py_DECREF(result);
            Py_DECREF(key);
            return HQ_ERR;
        }
    }
    if (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 2) {
        PyErr_SetString(PyExc_TypeError, "outcome cache values must be 2-tuples");
        Py_DECREF(result);
        Py_DECREF(key);
        return HQ_ERR;
    }
    want(w, C_outcome, PyTuple_GET_ITEM(result, 0));
    want(w, C_rule_id, PyTuple_GET_ITEM(result, 1));
    /* remember it (the ring owns key and result) */
    int slot;
    if (c->ring_n < RING) {
        slot = c->ring_n++;
    }
    else {
        slot = c->ring_pos;
        c->ring_pos = (c->ring_pos + 1) % RING;
        Py_DECREF(c->ring_key[slot]);
        Py_DECREF(c->ring_res[slot]);
    }
    c->ring_key[slot] = key;
    c->ring_res[slot] = result;
    return HQ_OK;
}

/* The annotate columns (HyperquackProcessor.annotate) → w. */
static int
annotate(Ctx *c, PyObject **w, PyObject *domain, int is_control, PyObject *anomaly,
         PyObject *error, PyObject *matches, Received *rv)
{
    /* domain category: the previous row's when the domain is the same */
    if (c->cat_dom != NULL && c->cat_ctl == is_control && same_value(c->cat_dom, domain)) {
        want(w, C_category, c->cat_val);
    }
    else {
        PyObject *cache = is_control ? c->ctl_cache : c->cat_cache;
        PyObject *category = PyDict_GetItemWithError(cache, domain);
        if (category != NULL) {
            Py_INCREF(category);
        }
        else {
            if (PyErr_Occurred()) {
                return HQ_ERR;
            }
            PyObject *flag = is_control ? Py_True : Py_False;
            category = PyObject_CallFunctionObjArgs(c->category_fn, domain, flag, NULL);
            if (category == NULL) {
                return HQ_ERR;
            }
            if (cache_put(c, cache, domain, category) < 0) {
                Py_DECREF(category);
                return HQ_ERR;
            }
        }
        want(w, C_category, category);
        Py_INCREF(domain);
        Py_XSETREF(c->cat_dom, domain);
        Py_XSETREF(c->cat_val, category); /* steals the new reference */
        c->cat_ctl = is_control;
    }

    /* blockpage / false positive signature */
    PyObject *known = Py_None, *signature = Py_None;
    if (anomaly == Py_True) {
        int none;
        PyObject *text = page_text(rv, &none);
        if (text == NULL && !none) {
            return HQ_ERR;
        }
        if (text != NULL && PyUnicode_GET_LENGTH(text) > 0) {
            PyObject *match;
            if (c->pg_text != NULL && same_value(c->pg_text, text)) {
                match = c->pg_match;
                Py_INCREF(match);
                Py_DECREF(text);
            }
            else {
                match = page_lookup(c, text);
                if (match == NULL) {
                    Py_DECREF(text);
                    return HQ_ERR;
                }
                Py_XSETREF(c->pg_text, text); /* steals */
                Py_INCREF(match);
                Py_XSETREF(c->pg_match, match);
            }
            if (match != Py_None) {
                known = PyTuple_GET_ITEM(match, 0);
                signature = PyTuple_GET_ITEM(match, 1);
                want(w, C_known, known);
                want(w, C_signature, signature); /* w keeps known and signature alive */
            }
            Py_DECREF(match);
        }
        else {
            Py_XDECREF(text);
        }
    }

    /* certificate */
    if (rv->cert_raw != NULL && rv->cert_raw != Py_None) {
        int truthy = PyObject_IsTrue(rv->cert_raw);
        if (truthy < 0) {
            return HQ_ERR;
        }
        if (truthy) {
            PyObject *cols = PyObject_CallFunctionObjArgs(c->cert_fn, rv->cert_raw, domain, NULL);
            if (cols == NULL) {
                return HQ_ERR;
            }
            if (cols != Py_None) {
                if (!PyTuple_CheckExact(cols) || PyTuple_GET_SIZE(cols) != 6) {
                    Py_DECREF(cols);
                    PyErr_SetString(PyExc_TypeError, "cert_fn must return a 6-tuple or None");
                    return HQ_ERR;
                }
                int ok = PyObject_IsTrue(PyTuple_GET_ITEM(cols, 1));
                if (ok < 0) {
                    Py_DECREF(cols);
                    return HQ_ERR;
                }
                want(w, C_cert, PyTuple_GET_ITEM(cols, 0));
                if (!ok) {
                    c->cert_errors++;
                }
                else {
                    PyObject *alt = PySequence_List(PyTuple_GET_ITEM(cols, 4));
                    if (alt == NULL) {
                        Py_DECREF(cols);
                        return HQ_ERR;
                    }
                    Py_XSETREF(w[C_cert_alt], alt); /* steals */
                    want(w, C_cert_cn, PyTuple_GET_ITEM(cols, 2));
                    want(w, C_cert_issuer, PyTuple_GET_ITEM(cols, 3));
                    want(w, C_cert_match, PyTuple_GET_ITEM(cols, 5));
                }
            }
            Py_DECREF(cols);
        }
    }

    return outcome(c, w, error, matches, known, signature, rv);
}

/* ---- rows ------------------------------------------------------------------------------ */

/*
 * Rows are copies: the first row of a batch copies the batch template (the processor's
 * template, every column None, plus the provenance columns and the rules version); every
 * later row copies the previous row, and only the columns whose value differs from it are
 * stored (consecutive rows share most values: the record's columns, the domain and its
 * category, the error, the outcome, ...). Copies keep the column order of the template.
 */
static PyObject *
batch_template(Ctx *c)
{
    PyObject *tpl = PyDict_Copy(c->template);
    if (tpl == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(tpl, K_source, c->source) < 0 ||
        PyDict_SetItem(tpl, K_source_file, c->source_file) < 0 ||
        PyDict_SetItem(tpl, K_pipeline_version, c->pipeline_version) < 0 ||
        PyDict_SetItem(tpl, K_outcome_rules_version, c->rules_version) < 0) {
        Py_DECREF(tpl);
        return NULL;
    }
    for (int i = 0; i < NCOL; i++) {
        PyObject *v = PyDict_GetItemWithError(tpl, COLK[i]);
        if (v == NULL && PyErr_Occurred()) {
            Py_DECREF(tpl);
            return NULL;
        }
        /* a column missing from the template: never equal, so always stored */
        c->prev[0][i] = c->prev[1][i] = c->tplv[i] = v;
    }
    return tpl;
}


/* ---- Arrow columns (process_batch_arrow) ------------------------------------------------ */

/*
 * In Arrow mode the simple columns are not Python lists but Arrow-layout buffers written
 * here: STRING (and the DATE/TIMESTAMP strings) as int32 offsets + UTF-8 bytes, INTEGER
 * as int64 values, BOOLEAN as packed bits, repeated STRING (the headers and the
 * certificate's names) as int32 offsets into items laid out as STRING, each with a
 * validity bitmap (bit set = not null). The Python side wraps them without a copy
 * (pyarrow.Array.from_buffers). The other columns (the certificate's bytes, and those the
 * Python side reads as values: the date and the server IP) stay lists. COLUMN_KINDS tells
 * the Python side which is which.
 */
enum { A_LIST, A_UTF8, A_INT64, A_BOOL, A_LIST_UTF8 };
static const char *const KIND_NAMES[] = {"list", "utf8", "int64", "bool", "list_utf8"};
static const unsigned char COL_KIND[NCOL] = {
    [C_server_ip] = A_LIST,      [C_measurement_id] = A_UTF8, [C_source_line] = A_INT64,
    [C_anomaly] = A_BOOL,        [C_controls_failed] = A_BOOL, [C_stateful] = A_BOOL,
    [C_domain] = A_UTF8,         [C_is_control] = A_BOOL,     [C_category] = A_UTF8,
    [C_date] = A_LIST,           [C_start] = A_UTF8,          [C_end] = A_UTF8,
    [C_retry] = A_INT64,         [C_error] = A_UTF8,          [C_matches] = A_BOOL,
    [C_status] = A_UTF8,         [C_headers] = A_LIST_UTF8,        [C_body] = A_UTF8,
    [C_tls_version] = A_INT64,   [C_tls_cipher] = A_INT64,    [C_cert] = A_LIST,
    [C_cert_cn] = A_UTF8,        [C_cert_issuer] = A_UTF8,    [C_cert_alt] = A_LIST_UTF8,
    [C_cert_match] = A_BOOL,     [C_known] = A_BOOL,          [C_signature] = A_UTF8,
    [C_outcome] = A_UTF8,        [C_rule_id] = A_UTF8,
};

/* A growable byte buffer (PyMem). */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

/* One column's builder: n rows so far, nulls among them. */
typedef struct ACol {
    Buf valid;  /* validity bits, (n + 7) / 8 bytes, bits past n clear */
    Buf values; /* utf8: n + 1 int32 offsets; int64: n values; bool: (n + 7) / 8 bytes;
                   list_utf8: n + 1 int32 offsets into the items */
    Buf chars;  /* utf8, list_utf8: the UTF-8 bytes of the values (of the items) */
    Buf items;  /* list_utf8: int32 offsets of the items into chars (items + 1) */
    Py_ssize_t n, nulls;
} ACol;

/* Make room for `need` bytes in all (doubling); -1 with MemoryError when impossible. */
static int
buf_reserve(Buf *b, size_t need)
{
    if (need <= b->cap) {
        return 0;
    }
    if (need > (size_t)PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        return -1;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        cap = cap > (size_t)PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    }
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void
buf_free(Buf *b)
{
    PyMem_Free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Append bit number n (0 or 1) of a bitmap holding n bits. */
static int
bit_append(Buf *b, Py_ssize_t n, int bit)
{
    size_t byte = (size_t)n >> 3;
    if ((n & 7) == 0) {
        if (buf_reserve(b, byte + 1) < 0) {
            return -1;
        }
        b->p[byte] = 0;
        b->len = byte + 1;
    }
    if (bit) {
        ((unsigned char *)b->p)[byte] |= (unsigned char)(1u << (n & 7));
    }
    return 0;
}

/* Keep the first n bits of a bitmap (the bits past n cleared). */
static void
bits_truncate(Buf *b, Py_ssize_t n)
{
    b->len = ((size_t)n + 7) >> 3;
    if (n & 7) {
        ((unsigned char *)b->p)[n >> 3] &= (unsigned char)((1u << (n & 7)) - 1);
    }
}

static int
acol_init(ACol *a, int kind)
{
    memset(a, 0, sizeof *a);
    if (kind == A_UTF8 || kind == A_LIST_UTF8) { /* offsets[0] = 0 */
        if (buf_reserve(&a->values, 4 * 64) < 0) {
            return -1;
        }
        memset(a->values.p, 0, 4);
        a->values.len = 4;
    }
    if (kind == A_LIST_UTF8) { /* the items' offsets[0] = 0 */
        if (buf_reserve(&a->items, 4 * 256) < 0) {
            return -1;
        }
        memset(a->items.p, 0, 4);
        a->items.len = 4;
    }
    return 0;
}

static void
acol_free(ACol *a)
{
    buf_free(&a->valid);
    buf_free(&a->values);
    buf_free(&a->chars);
    buf_free(&a->items);
}

/*
 * Append v to a builder of this kind: HQ_OK; HQ_SLOW when v is not a value of the
 * column's type (the reference decides); HQ_ERR with an exception (c->fatal set when the
 * builder itself failed: the batch stops). On any failure the builder may hold a partial
 * row: the caller truncates every column back to the line's start.
 */
static int
acol_append(Ctx *c, ACol *a, int kind, PyObject *v)
{
    int valid = v != Py_None;
    switch (kind) {
    case A_UTF8: {
        const char *s = NULL;
        Py_ssize_t size = 0;
        if (valid) {
            if (!PyUnicode_CheckExact(v)) {
                return HQ_SLOW;
            }
            if ((s = PyUnicode_AsUTF8AndSize(v, &size)) == NULL) {
                return HQ_ERR; /* e.g. a lone surrogate: the reference decides */
            }
        }
        int32_t end;
        memcpy(&end, a->values.p + 4 * (size_t)a->n, 4);
        if (size > (Py_ssize_t)(INT32_MAX - end)) {
            PyErr_SetString(PyExc_OverflowError, "a string column exceeds 2 GiB in one batch");
            c->fatal = 1;
            return HQ_ERR;
        }
        if (buf_reserve(&a->values, 4 * ((size_t)a->n + 2)) < 0 ||
            (size > 0 && buf_reserve(&a->chars, (size_t)end + (size_t)size) < 0)) {
            c->fatal = 1;
            return HQ_ERR;
        }
        if (size > 0) {
            memcpy(a->chars.p + end, s, (size_t)size);
        }
        end += (int32_t)size;
        a->chars.len = (size_t)end;
        memcpy(a->values.p + 4 * ((size_t)a->n + 1), &end, 4);
        a->values.len = 4 * ((size_t)a->n + 2);
        break;
    }
    case A_INT64: {
        long long x = 0;
        if (valid) {
            if (!PyLong_CheckExact(v)) {
                return HQ_SLOW;
            }
            int overflow = 0;
            x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (x == -1 && PyErr_Occurred()) {
                return HQ_ERR;
            }
            if (overflow) {
                return HQ_SLOW;
            }
        }
        int64_t x64 = (int64_t)x;
        if (buf_reserve(&a->values, 8 * ((size_t)a->n + 1)) < 0) {
            c->fatal = 1;
            return HQ_ERR;
        }
        memcpy(a->values.p + 8 * (size_t)a->n, &x64, 8);
        a->values.len = 8 * ((size_t)a->n + 1);
        break;
    }
    case A_LIST_UTF8: {
        /* Every item is checked (and its UTF-8 form made) before anything is written, so a
           list refused or failing leaves the builder as it was. */
        Py_ssize_t k = 0, total = 0;
        if (valid) {
            if (!PyList_CheckExact(v)) {
                return HQ_SLOW;
            }
            k = PyList_GET_SIZE(v);
            for (Py_ssize_t j = 0; j < k; j++) {
                PyObject *item = PyList_GET_ITEM(v, j);
                Py_ssize_t size = 0;
                if (!PyUnicode_CheckExact(item)) {
                    return HQ_SLOW;
                }
                if (PyUnicode_AsUTF8AndSize(item, &size) == NULL) {
                    return HQ_ERR; /* e.g. a lone surrogate: the reference decides */
                }
                if (size > (Py_ssize_t)INT32_MAX - total) {
                    total = -1;
                    break;
                }
                total += size;
            }
        }
        int32_t first, end;
        memcpy(&first, a->values.p + 4 * (size_t)a->n, 4);
        memcpy(&end, a->items.p + 4 * (size_t)first, 4);
        if (total < 0 || k > (Py_ssize_t)(INT32_MAX - first) ||
            total > (Py_ssize_t)(INT32_MAX - end)) {
            PyErr_SetString(PyExc_OverflowError, "a list column exceeds 2 GiB in one batch");
            c->fatal = 1;
            return HQ_ERR;
        }
        if (buf_reserve(&a->values, 4 * ((size_t)a->n + 2)) < 0 ||
            buf_reserve(&a->items, 4 * ((size_t)first + (size_t)k + 1)) < 0 ||
            (total > 0 && buf_reserve(&a->chars, (size_t)end + (size_t)total) < 0)) {
            c->fatal = 1;
            return HQ_ERR;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            Py_ssize_t size = 0;
            const char *text = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(v, j), &size);
            if (size > 0) { /* text is the UTF-8 form made above (cached in the str) */
                memcpy(a->chars.p + end, text, (size_t)size);
            }
            end += (int32_t)size;
            memcpy(a->items.p + 4 * ((size_t)first + (size_t)j + 1), &end, 4);
        }
        a->chars.len = (size_t)end;
        a->items.len = 4 * ((size_t)first + (size_t)k + 1);
        int32_t last = first + (int32_t)k;
        memcpy(a->values.p + 4 * ((size_t)a->n + 1), &last, 4);
        a->values.len = 4 * ((size_t)a->n + 2);
        break;
    }
    case A_BOOL:
        if (valid && v != Py_True && v != Py_False) {
            return HQ_SLOW;
        }
        if (bit_append(&a->values, a->n, v == Py_True) < 0) {
            c->fatal = 1;
            return HQ_ERR;
        }
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "not an Arrow column");
        c->fatal = 1;
        return HQ_ERR;
    }
    if (bit_append(&a->valid, a->n, valid) < 0) {
        c->fatal = 1;
        return HQ_ERR;
    }
    a->n++;
    a->nulls += !valid;
    return HQ_OK;
}

/* Keep the first n rows of a builder (n <= a->n). */
static void
acol_truncate(ACol *a, int kind, Py_ssize_t n)
{
    if (a->n <= n) {
        return;
    }
    if (kind == A_UTF8) {
        int32_t end;
        memcpy(&end, a->values.p + 4 * (size_t)n, 4);
        a->chars.len = (size_t)end;
        a->values.len = 4 * ((size_t)n + 1);
    }
    else if (kind == A_LIST_UTF8) {
        int32_t first, end;
        memcpy(&first, a->values.p + 4 * (size_t)n, 4);
        memcpy(&end, a->items.p + 4 * (size_t)first, 4);
        a->chars.len = (size_t)end;
        a->items.len = 4 * ((size_t)first + 1);
        a->values.len = 4 * ((size_t)n + 1);
    }
    else if (kind == A_INT64) {
        a->values.len = 8 * (size_t)n;
    }
    else {
        bits_truncate(&a->values, n);
    }
    bits_truncate(&a->valid, n);
    a->n = n;
    a->nulls = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        a->nulls += !((unsigned char)a->valid.p[i >> 3] & (1u << (i & 7)));
    }
}

static PyObject *
buf_bytes(const Buf *b)
{
    return PyBytes_FromStringAndSize(b->len ? b->p : "", (Py_ssize_t)b->len);
}

/* (n, null_count, validity bytes or None when no null, values bytes, chars bytes or None;
   list_utf8: (items' offsets bytes, chars bytes) in place of chars) */
static PyObject *
acol_result(const ACol *a, int kind)
{
    PyObject *valid = NULL, *values = NULL, *chars = NULL, *out = NULL;
    if (a->nulls) {
        valid = buf_bytes(&a->valid);
    }
    else {
        valid = Py_None;
        Py_INCREF(valid);
    }
    if (kind == A_UTF8) {
        chars = buf_bytes(&a->chars);
    }
    else if (kind == A_LIST_UTF8) {
        PyObject *items = buf_bytes(&a->items), *text = buf_bytes(&a->chars);
        chars = items != NULL && text != NULL ? PyTuple_Pack(2, items, text) : NULL;
        Py_XDECREF(items);
        Py_XDECREF(text);
    }
    else {
        chars = Py_None;
        Py_INCREF(chars);
    }
    values = buf_bytes(&a->values);
    if (valid != NULL && values != NULL && chars != NULL) {
        out = Py_BuildValue("(nnOOO)", a->n, a->nulls, valid, values, chars);
    }
    Py_XDECREF(valid);
    Py_XDECREF(values);
    Py_XDECREF(chars);
    return out;
}

/* The number of rows in column i (columnar and Arrow modes). */
static Py_ssize_t
column_rows(Ctx *c, int i)
{
    if (c->acols != NULL && COL_KIND[i] != A_LIST) {
        return c->acols[i].n;
    }
    return PyList_GET_SIZE(c->cols[i]);
}

/*
 * Columnar mode: append each value to its column list. A str equal to the previous row's
 * (same kind) is stored as that row's object, as commit_row does (equal values, shared:
 * retries of one measurement often repeat a page). The previous values are borrowed from
 * the column lists; run_batch resets them when it truncates the lists (slow line).
 */
static int
commit_columns(Ctx *c, PyObject **w, int is_control)
{
    PyObject **prev = c->prev[is_control];
    PyObject *now[NCOL];
    for (int i = 0; i < NCOL; i++) {
        PyObject *v = w[i] != NULL ? w[i] : Py_None;
        if (c->acols != NULL && COL_KIND[i] != A_LIST) {
            int r = acol_append(c, &c->acols[i], COL_KIND[i], v);
            if (r != HQ_OK) {
                return r; /* the caller truncates every column back to the line's start */
            }
            now[i] = NULL; /* not kept: w's values die with the row */
            continue;
        }
        PyObject *p = prev[i];
        if (p != NULL && p != v && same_value(v, p)) {
            v = p;
        }
        if (PyList_Append(c->cols[i], v) < 0) {
            return HQ_ERR; /* the caller truncates every column back to the line's start */
        }
        now[i] = v;
    }
    memcpy(prev, now, sizeof now);
    return HQ_OK;
}

/*
 * Copy the previous row of the same kind (test or control: their values differ most) or
 * the batch template, and store the columns whose value differs from w.
 */
static int
commit_row(Ctx *c, PyObject *rows, PyObject **w, int is_control)
{
    if (c->cols != NULL) {
        return commit_columns(c, w, is_control);
    }
    PyObject *base = c->prev_row[is_control] != NULL ? c->prev_row[is_control] : c->batch_tpl;
    PyObject **prev = c->prev[is_control];
    PyObject *row = PyDict_Copy(base);
    if (row == NULL) {
        return HQ_ERR;
    }
    PyObject *now[NCOL];
    for (int i = 0; i < NCOL; i++) {
        PyObject *v = w[i] != NULL ? w[i] : Py_None;
        PyObject *p = prev[i];
        /* equal str values: the row keeps the previous row's object (equal rows) */
        if (p != NULL && same_value(v, p)) {
            now[i] = p;
            continue;
        }
        if (PyDict_SetItem(row, COLK[i], v) < 0) {
            Py_DECREF(row);
            return HQ_ERR;
        }
        now[i] = v;
    }
    if (PyList_Append(rows, row) < 0) {
        Py_DECREF(row);
        return HQ_ERR;
    }
    /* row holds a reference to every now[i] */
    memcpy(prev, now, sizeof now);
    Py_XSETREF(c->prev_row[is_control], row);
    return HQ_OK;
}

/* One roundtrip → one finished row appended to rows. retry < 0 means None. */
static int
build_row(Ctx *c, Record *rec, PyObject *rows, PyObject *domain, int is_control,
          PyObject *start_v, PyObject *end_v, Py_ssize_t retry, PyObject *error,
          PyObject *matches, PyObject *received)
{
    PyObject *w[NCOL] = {NULL};
    Received rv = {NULL, NULL, NULL, NULL};
    int r = norm_ts(c, start_v, &w[C_date], &w[C_start]);
    if (r != HQ_OK) {
        return r;
    }
    r = norm_ts(c, end_v, NULL, &w[C_end]);
    if (r != HQ_OK) {
        goto done;
    }
    want(w, C_server_ip, rec->server);
    want(w, C_measurement_id, rec->mid);
    want(w, C_source_line, rec->line_no);
    want(w, C_anomaly, rec->anomaly);
    want(w, C_controls_failed, rec->controls_failed);
    want(w, C_stateful, rec->stateful);
    want(w, C_domain, domain);
    want(w, C_is_control, is_control ? Py_True : Py_False);
    if (retry >= 0 && (w[C_retry] = PyLong_FromSsize_t(retry)) == NULL) {
        r = HQ_ERR;
        goto done;
    }
    want(w, C_error, error);
    want(w, C_matches, matches);
    if (received != NULL) {
        r = received_fields(w, received, &rv);
        if (r != HQ_OK) {
            goto done;
        }
    }
    r = annotate(c, w, domain, is_control, rec->anomaly, error, matches, &rv);
    if (r != HQ_OK) {
        goto done;
    }
    r = commit_row(c, rows, w, is_control != 0);
done:
    for (int i = 0; i < NCOL; i++) {
        Py_XDECREF(w[i]);
    }
    Py_XDECREF(rv.headers);
    return r;
}

#define TRY(expr)                 \
    do {                          \
        int _r = (expr);          \
        if (_r != HQ_OK) {         \
            return _r;            \
        }                         \
    } while (0)

/* hyperquack._flatten_v1 + annotate; f holds the record's values (walk, V1_KEYS order) */
enum { R1_Server, R1_Keyword, R1_Retries, R1_Results, R1_Blocked, R1_FailSanity,
       R1_StatefulBlock, R1_N };
enum { T1_Sent, T1_Received, T1_Success, T1_Error, T1_StartTime, T1_EndTime, T1_N };
enum { R2_vp, R2_test_url, R2_response, R2_anomaly, R2_controls_failed, R2_stateful_block,
       R2_N };
enum { T2_matches_template, T2_response, T2_error, T2_control_url, T2_start_time,
       T2_end_time, T2_N };
static PyObject *R1_KEYS[R1_N], *T1_KEYS[T1_N], *R2_KEYS[R2_N], *T2_KEYS[T2_N];
static PyObject *R1_SEEN[R1_N], *T1_SEEN[T1_N], *R2_SEEN[R2_N], *T2_SEEN[T2_N]; /* owned */

static int
do_v1(Ctx *c, PyObject **f, Record *rec, PyObject *rows)
{
    PyObject *server = f[R1_Server], *keyword = f[R1_Keyword], *results = f[R1_Results];
    PyObject *retries = f[R1_Retries];
    if (server == NULL || !PyUnicode_CheckExact(server) || keyword == NULL ||
        !PyUnicode_CheckExact(keyword) || results == NULL || !PyList_CheckExact(results)) {
        return HQ_SLOW;
    }
    int has_retries = 0;
    long long n_retries = 0;
    if (retries != NULL && retries != Py_None) {
        if (!PyLong_CheckExact(retries)) {
            return HQ_SLOW;
        }
        int overflow = 0;
        n_retries = PyLong_AsLongLongAndOverflow(retries, &overflow);
        if (n_retries == -1 && PyErr_Occurred()) {
            return HQ_ERR;
        }
        if (overflow) {
            return HQ_SLOW;
        }
        has_retries = 1;
    }
    rec->server = server;
    TRY(opt_bool_v(f[R1_Blocked], &rec->anomaly));
    TRY(opt_bool_v(f[R1_FailSanity], &rec->controls_failed));
    TRY(opt_bool_v(f[R1_StatefulBlock], &rec->stateful));
    /* the list is owned by the record (kept alive by the caller); no Python code can
       change it while we iterate: callbacks never see it */
    for (Py_ssize_t index = 0; index < PyList_GET_SIZE(results); index++) {
        PyObject *rt = PyList_GET_ITEM(results, index);
        if (!PyDict_CheckExact(rt)) {
            return HQ_SLOW;
        }
        PyObject *t[T1_N];
        TRY(walk(rt, T1_KEYS, T1_SEEN, T1_N, t));
        PyObject *sent, *error, *matches, *domain;
        TRY(opt_str_v(t[T1_Sent], &sent));
        TRY(opt_str_v(t[T1_Error], &error));
        TRY(opt_bool_v(t[T1_Success], &matches));
        int is_control;
        if (sent != Py_None && PyUnicode_GET_LENGTH(sent) > 0) {
            TRY(domain_from_sent(sent, c->sent_dom, &domain));
            if (domain == c->sent_dom) {
                is_control = c->sent_dom_ctl;
            }
            else {
                is_control = PySet_Contains(c->control_domains, domain);
                if (is_control < 0) {
                    Py_DECREF(domain);
                    return HQ_ERR;
                }
                Py_INCREF(domain);
                Py_XSETREF(c->sent_dom, domain);
                c->sent_dom_ctl = is_control;
            }
        }
        else {
            is_control = has_retries && (long long)index > n_retries;
            domain = is_control ? S_empty : keyword;
            Py_INCREF(domain);
        }
        int r = build_row(c, rec, rows, domain, is_control, t[T1_StartTime], t[T1_EndTime],
                          is_control ? -1 : index, error, matches, t[T1_Received]);
        Py_DECREF(domain);
        if (r != HQ_OK) {
            return r;
        }
    }
    return HQ_OK;
}

/* hyperquack._flatten_v2 + annotate; f holds the record's values (walk, R2_KEYS order) */
static int
do_v2(Ctx *c, PyObject **f, Record *rec, PyObject *rows)
{
    PyObject *vp = f[R2_vp], *test_url = f[R2_test_url], *responses = f[R2_response];
    if (vp == NULL || !PyUnicode_CheckExact(vp) || test_url == NULL ||
        !PyUnicode_CheckExact(test_url) || responses == NULL || !PyList_CheckExact(responses)) {
        return HQ_SLOW;
    }
    rec->server = vp;
    TRY(opt_bool_v(f[R2_anomaly], &rec->anomaly));
    TRY(opt_bool_v(f[R2_controls_failed], &rec->controls_failed));
    TRY(opt_bool_v(f[R2_stateful_block], &rec->stateful));
    Py_ssize_t retry = 0;
    for (Py_ssize_t index = 0; index < PyList_GET_SIZE(responses); index++) {
        PyObject *rt = PyList_GET_ITEM(responses, index);
        if (!PyDict_CheckExact(rt)) {
            return HQ_SLOW;
        }
        PyObject *t[T2_N];
        TRY(walk(rt, T2_KEYS, T2_SEEN, T2_N, t));
        PyObject *control_url, *error, *matches;
        TRY(opt_str_v(t[T2_control_url], &control_url));
        TRY(opt_str_v(t[T2_error], &error));
        TRY(opt_bool_v(t[T2_matches_template], &matches));
        int is_control = control_url != Py_None;
        TRY(build_row(c, rec, rows, is_control ? control_url : test_url, is_control,
                      t[T2_start_time], t[T2_end_time], is_control ? -1 : retry, error,
                      matches, t[T2_response]));
        if (!is_control) {
            retry++;
        }
    }
    return HQ_OK;
}

/* ---- batch ------------------------------------------------------------------------------ */

static int
parse_ctx(PyObject *t, Ctx *c)
{
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != CTX_ITEMS) {
        PyErr_Format(PyExc_TypeError, "ctx must be a tuple of %d items", CTX_ITEMS);
        return -1;
    }
#define ITEM(i) PyTuple_GET_ITEM(t, (i))
    c->loads = ITEM(0);
    c->template = ITEM(1);
    c->control_domains = ITEM(2);
    c->category_fn = ITEM(3);
    c->cat_cache = ITEM(4);
    c->ctl_cache = ITEM(5);
    c->page_cache = ITEM(6);
    c->page_fn = ITEM(7);
    c->cert_fn = ITEM(8);
    c->classify_fn = ITEM(9);
    c->trusted_headers = ITEM(10);
    c->rules_version = ITEM(11);
    c->cache_limit = PyLong_AsSsize_t(ITEM(12));
    c->outcome_cache = ITEM(13);
    c->scan_type = ITEM(14);
    c->digest = ITEM(15);
    c->source = ITEM(16);
    c->source_file = ITEM(17);
    c->pipeline_version = ITEM(18);
#undef ITEM
    if (c->cache_limit == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!PyDict_CheckExact(c->template) || !PyDict_CheckExact(c->cat_cache) ||
        !PyDict_CheckExact(c->ctl_cache) || !PyDict_CheckExact(c->page_cache) ||
        !PyDict_CheckExact(c->outcome_cache) || !PyAnySet_Check(c->control_domains) ||
        !PyAnySet_Check(c->trusted_headers) || !PyUnicode_Check(c->digest) ||
        !PyUnicode_IS_ASCII(c->digest) || !PyUnicode_Check(c->rules_version) ||
        !PyUnicode_Check(c->scan_type) || !PyCallable_Check(c->loads) ||
        !PyCallable_Check(c->category_fn) || !PyCallable_Check(c->page_fn) ||
        !PyCallable_Check(c->cert_fn) || !PyCallable_Check(c->classify_fn) ||
        c->cache_limit < 1) {
        PyErr_SetString(PyExc_TypeError, "ctx has an item of the wrong type");
        return -1;
    }
    c->cert_errors = 0;
    c->last_date = NULL;
    c->prev_row[0] = c->prev_row[1] = NULL;
    c->cols = NULL;
    c->acols = NULL;
    c->fatal = 0;
    c->ring_n = c->ring_pos = 0;
    c->sent_dom = c->cat_dom = c->cat_val = c->pg_text = c->pg_match = NULL;
    c->sent_dom_ctl = c->cat_ctl = 0;
    c->batch_tpl = batch_template(c);
    return c->batch_tpl == NULL ? -1 : 0;
}

static int
is_blank(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!(ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\x0b' ||
              ch == '\x0c')) {
            return 0;
        }
    }
    return 1;
}

/* One non-blank line: HQ_OK (rows appended), HQ_SLOW, or HQ_ERR (exception set). */
static int
do_line(Ctx *c, PyObject *raw, long long line_no, PyObject *rows)
{
    if (line_no < 0) {
        return HQ_SLOW;
    }
    PyObject *obj = PyObject_CallOneArg(c->loads, raw);
    if (obj == NULL) {
        return HQ_ERR;
    }
    if (!PyDict_CheckExact(obj)) {
        Py_DECREF(obj);
        return HQ_SLOW;
    }
    PyObject *f[(int)R1_N + (int)R2_N]; /* room for either */
    int r = walk(obj, R1_KEYS, R1_SEEN, R1_N, f);
    int is_v1 = r == HQ_OK && f[R1_Server] != NULL;
    if (r == HQ_OK && !is_v1) {
        r = walk(obj, R2_KEYS, R2_SEEN, R2_N, f);
        if (r == HQ_OK && f[R2_vp] == NULL) {
            r = HQ_SLOW;
        }
    }
    if (r != HQ_OK) {
        Py_DECREF(obj);
        return r;
    }
    Record rec = {NULL, NULL, NULL, Py_None, Py_None, Py_None};
    /* f"{line_no:08x}": at least 8 lowercase hex digits */
    char hex[32];
    int nhex = 0;
    unsigned long long v = (unsigned long long)line_no;
    char rev[20];
    do {
        rev[nhex++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v != 0);
    while (nhex < 8) {
        rev[nhex++] = '0';
    }
    for (int k = 0; k < nhex; k++) {
        hex[k] = rev[nhex - 1 - k];
    }
    rec.mid = ascii2((const char *)PyUnicode_1BYTE_DATA(c->digest),
                     PyUnicode_GET_LENGTH(c->digest), hex, nhex);
    rec.line_no = PyLong_FromLongLong(line_no);
    r = HQ_ERR;
    if (rec.mid != NULL && rec.line_no != NULL) {
        r = is_v1 ? do_v1(c, f, &rec, rows) : do_v2(c, f, &rec, rows);
    }
    Py_XDECREF(rec.mid);
    Py_XDECREF(rec.line_no);
    Py_DECREF(obj);
    return r;
}

/*
 * The batch loop shared by the entry points. Row mode (mode 0): rows get one dict per row
 * and a None placeholder per slow line; returns (rows, slow, counts). Columnar mode (1):
 * the NCOL column lists get one value per row (nothing for a slow line); returns
 * (columns, slow, slow_at, counts) where slow_at[k] is the row position at which the
 * rows of the slow line slow[k] belong (rows of the lines before it). Arrow mode (2): as
 * columnar, but the columns whose COL_KIND is not A_LIST are Arrow buffers (acol_result)
 * instead of lists.
 */
static PyObject *
run_batch(PyObject *const *args, Py_ssize_t nargs, int mode)
{
    static const char *const usage[] = {
        "process_batch(lines, first_line_no, ctx)",
        "process_batch_columns(lines, first_line_no, ctx)",
        "process_batch_arrow(lines, first_line_no, ctx)",
    };
    int columnar = mode != 0;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, usage[mode]);
        return NULL;
    }
    PyObject *lines = args[0];
    if (!PyList_Check(lines)) {
        PyErr_SetString(PyExc_TypeError, "lines must be a list");
        return NULL;
    }
    long long first = PyLong_AsLongLong(args[1]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Ctx c;
    if (parse_ctx(args[2], &c) < 0) {
        return NULL;
    }
    PyObject *rows = NULL, *columns = NULL, *slow_at = NULL, *result = NULL;
    PyObject *colv[NCOL] = {NULL};
    ACol acols[NCOL];
    memset(acols, 0, sizeof acols); /* freed at the end whatever the mode */
    PyObject *slow = PyList_New(0);
    Py_ssize_t n_lines = 0, n_blank = 0, n_ok = 0, n_empty = 0, n_cert = 0, n_slow = 0;
    Py_ssize_t n_rows = 0; /* columnar: the length of every column list between lines */
    if (slow == NULL) {
        goto fail;
    }
    if (columnar) {
        if ((columns = PyTuple_New(NCOL)) == NULL || (slow_at = PyList_New(0)) == NULL) {
            goto fail;
        }
        for (int i = 0; i < NCOL; i++) {
            if (mode == 2 && COL_KIND[i] != A_LIST) {
                if (acol_init(&acols[i], COL_KIND[i]) < 0) {
                    goto fail;
                }
                continue;
            }
            if ((colv[i] = PyList_New(0)) == NULL) {
                goto fail;
            }
            PyTuple_SET_ITEM(columns, i, colv[i]); /* the tuple owns the lists */
        }
        c.cols = colv;
        c.acols = mode == 2 ? acols : NULL;
    }
    else if ((rows = PyList_New(0)) == NULL) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        PyObject *raw = PyList_GET_ITEM(lines, i);
        Py_INCREF(raw);
        int r;
        Py_ssize_t mark = columnar ? n_rows : PyList_GET_SIZE(rows);
        if (!PyBytes_CheckExact(raw)) {
            r = HQ_SLOW;
        }
        else {
            const char *s = PyBytes_AS_STRING(raw);
            Py_ssize_t n = PyBytes_GET_SIZE(raw);
            while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) {
                n--;
            }
            if (is_blank(s, n)) {
                n_blank++;
                Py_DECREF(raw);
                continue;
            }
            /* orjson ignores the trailing CR/LF the reference strips first */
            c.cert_errors = 0;
            long long line_no;
            if (first > LLONG_MAX - (long long)i) {
                r = HQ_SLOW;
            }
            else {
                line_no = first + (long long)i;
                r = do_line(&c, raw, line_no, rows);
            }
        }
        Py_DECREF(raw);
        if (r == HQ_ERR) {
            if (c.fatal || !PyErr_ExceptionMatches(PyExc_Exception)) {
                goto fail; /* a builder failed; KeyboardInterrupt and the like */
            }
            PyErr_Clear(); /* the reference will report it (dead letter) */
            r = HQ_SLOW;
        }
        Py_ssize_t now = columnar ? column_rows(&c, 0) : PyList_GET_SIZE(rows);
        if (r == HQ_SLOW) {
            if (columnar) {
                /* drop the line's partial rows (an error may leave the columns ragged) */
                int dropped = 0;
                for (int j = 0; j < NCOL; j++) {
                    if (column_rows(&c, j) <= mark) {
                        continue;
                    }
                    dropped = 1;
                    if (c.acols != NULL && COL_KIND[j] != A_LIST) {
                        acol_truncate(&acols[j], COL_KIND[j], mark);
                    }
                    else if (PyList_SetSlice(colv[j], mark, PyList_GET_SIZE(colv[j]), NULL) < 0) {
                        goto fail;
                    }
                }
                if (dropped) { /* the previous values may have been among them */
                    memcpy(c.prev[0], c.tplv, sizeof c.tplv);
                    memcpy(c.prev[1], c.tplv, sizeof c.tplv);
                }
                PyObject *at = PyLong_FromSsize_t(mark);
                if (at == NULL || PyList_Append(slow_at, at) < 0) {
                    Py_XDECREF(at);
                    goto fail;
                }
                Py_DECREF(at);
            }
            else if (PyList_SetSlice(rows, mark, now, NULL) < 0 ||
                     PyList_Append(rows, Py_None) < 0) {
                goto fail;
            }
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(slow, index) < 0) {
                Py_XDECREF(index);
                goto fail;
            }
            Py_DECREF(index);
            n_slow++;
            continue;
        }
        n_lines++;
        n_ok++;
        n_cert += c.cert_errors;
        if (now == mark) {
            n_empty++;
        }
        n_rows = now;
    }
    if (mode == 2) {
        for (int i = 0; i < NCOL; i++) {
            if (COL_KIND[i] == A_LIST) {
                continue;
            }
            if (acols[i].n != n_rows) {
                PyErr_SetString(PyExc_SystemError, "Arrow column of the wrong length");
                goto fail;
            }
            PyObject *built = acol_result(&acols[i], COL_KIND[i]);
            if (built == NULL) {
                goto fail;
            }
            PyTuple_SET_ITEM(columns, i, built);
            acol_free(&acols[i]); /* its bytes are copied: free them early */
        }
    }
    if (columnar) {
        result = Py_BuildValue("(OOO(nnnnnn))", columns, slow, slow_at, n_lines, n_rows, n_blank,
                               n_ok, n_empty, n_cert);
    }
    else {
        result = Py_BuildValue("(OO(nnnnnn))", rows, slow, n_lines,
                               PyList_GET_SIZE(rows) - n_slow, n_blank, n_ok, n_empty, n_cert);
    }
fail:
    for (int j = 0; j < NCOL; j++) {
        acol_free(&acols[j]);
    }
    Py_XDECREF(rows);
    Py_XDECREF(columns);
    Py_XDECREF(slow_at);
    Py_XDECREF(slow);
    Py_XDECREF(c.last_date);
    Py_XDECREF(c.batch_tpl);
    Py_XDECREF(c.prev_row[0]);
    Py_XDECREF(c.prev_row[1]);
    for (int j = 0; j < c.ring_n; j++) {
        Py_DECREF(c.ring_key[j]);
        Py_DECREF(c.ring_res[j]);
    }
    Py_XDECREF(c.sent_dom);
    Py_XDECREF(c.cat_dom);
    Py_XDECREF(c.cat_val);
    Py_XDECREF(c.pg_text);
    Py_XDECREF(c.pg_match);
    return result;
}

static PyObject *
process_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_batch(args, nargs, 0);
}

static PyObject *
process_batch_columns(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_batch(args, nargs, 1);
}

static PyObject *
process_batch_arrow(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_batch(args, nargs, 2);
}

/* ipv4_values(values) -> bytes: per item of the list `values`, an int64 (native byte
 * order): the IPv4 address of a str as server_columns._address reads it (surrounding
 * whitespace stripped, then inet_pton(AF_INET), the call socket.inet_pton makes), -1 for
 * anything else (not a str, a ':' in it, refused by inet_pton, an embedded NUL), and -2
 * for a str that is not ASCII (Python's strip() knows more whitespace: the caller decides
 * those). */
static int
ascii_space(char c)
{
    /* str.isspace() of the ASCII characters: \t \n \v \f \r, \x1c-\x1f and ' '. */
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
}

static PyObject *
ipv4_values(PyObject *self, PyObject *values)
{
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "ipv4_values: a list is required");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL) {
        return NULL;
    }
    int64_t *dst = (int64_t *)PyBytes_AS_STRING(out);
    char buf[64];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        int64_t r = -1;
        if (i + 8 < n) {
            /* The strings are scattered over the heap: fetch ahead (header and, for an
             * ASCII string this short, its text share a cache line or two). */
            __builtin_prefetch(PyList_GET_ITEM(values, i + 8));
        }
        if (PyUnicode_CheckExact(v)) {
            if (!PyUnicode_IS_ASCII(v)) {
                r = -2;
            } else {
                const char *t = (const char *)PyUnicode_DATA(v);
                Py_ssize_t len = PyUnicode_GET_LENGTH(v);
                if (memchr(t, ':', (size_t)len) == NULL && memchr(t, '\0', (size_t)len) == NULL) {
                    Py_ssize_t a = 0, b = len;
                    while (a < b && ascii_space(t[a])) {
                        a++;
                    }
                    while (b > a && ascii_space(t[b - 1])) {
                        b--;
                    }
                    if (b - a < (Py_ssize_t)sizeof buf) {
                        struct in_addr addr;
                        memcpy(buf, t + a, (size_t)(b - a));
                        buf[b - a] = '\0';
                        if (inet_pton(AF_INET, buf, &addr) == 1) {
                            r = (int64_t)ntohl(addr.s_addr);
                        }
                    }
                }
            }
        }
        dst[i] = r;
    }
    return out;
}

/* longest_prefix_v4(addrs, starts, first16, shifts, parents) -> bytes: for each address
 * of `addrs` (int64), the index of the longest prefix holding it, or -1, as
 * server_columns.ServerTables._longest_prefix computes it with numpy: the last prefix
 * starting at or before the address (a binary search between first16[a >> 16] and
 * first16[(a >> 16) + 1]), then up `parents` until a prefix holds it. `starts`,
 * `first16` (65,537 entries) and `shifts` (32 - length) are int64 buffers, `parents`
 * int32; the result is int64 (native byte order). An address outside 0..2**32-1 gets -1. */
static int
int_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (view->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "longest_prefix_v4: %s is not a buffer of %zd-byte"
                     " integers", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *
longest_prefix_v4(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *names[5] = {"addrs", "starts", "first16", "shifts", "parents"};
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "longest_prefix_v4 takes 5 buffers");
        return NULL;
    }
    Py_buffer views[5];
    int got = 0;
    PyObject *out = NULL;
    for (; got < 5; got++) {
        if (int_buffer(args[got], &views[got], got == 4 ? 4 : 8, names[got]) < 0) {
            goto done;
        }
    }
    Py_ssize_t n = views[0].len / 8, m = views[1].len / 8;
    if (views[2].len / 8 != 65537 || views[3].len / 8 != m || views[4].len / 4 != m) {
        PyErr_SetString(PyExc_ValueError, "longest_prefix_v4: first16 must have 65,537"
                        " entries, shifts and parents one per start");
        goto done;
    }
    const int64_t *addrs = views[0].buf, *starts = views[1].buf, *first16 = views[2].buf;
    const int64_t *shifts = views[3].buf;
    const int32_t *parents = views[4].buf;
    out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL) {
        goto done;
    }
    int64_t *dst = (int64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t a = addrs[i], at = -1;
        if (a >= 0 && a <= 0xFFFFFFFFLL) {
            int64_t lo = first16[a >> 16], hi = first16[(a >> 16) + 1];
            if (lo < 0 || hi > m || lo > hi) {
                Py_CLEAR(out);
                PyErr_SetString(PyExc_ValueError, "longest_prefix_v4: first16 out of range");
                goto done;
            }
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (starts[mid] <= a) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            at = lo - 1;
            /* Prefixes nest at most 33 deep: a longer walk means `parents` loops. */
            for (int steps = 0; at >= 0; steps++) {
                int64_t sh = shifts[at];
                if (steps > 33 || sh < 0 || sh > 32 || parents[at] >= at) {
                    at = -1;
                    break;
                }
                if ((a >> sh) == (starts[at] >> sh)) {
                    break;
                }
                at = parents[at];
            }
        }
        dst[i] = at;
    }
done:
    for (int k = 0; k < got; k++) {
        PyBuffer_Release(&views[k]);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"longest_prefix_v4", (PyCFunction)(void (*)(void))longest_prefix_v4, METH_FASTCALL,
     "longest_prefix_v4(addrs, starts, first16, shifts, parents) -> bytes\n\n"
     "Per address (int64) the index of the longest prefix holding it, or -1 (int64):\n"
     "a binary search inside the address's /16, then up the enclosing prefixes."},
    {"ipv4_values", (PyCFunction)ipv4_values, METH_O,
     "ipv4_values(values: list) -> bytes\n\n"
     "Per item an int64 (native byte order): the IPv4 address of a str (whitespace\n"
     "stripped, inet_pton), -1 for anything else, -2 for a non-ASCII str."},
    {"process_batch", (PyCFunction)(void (*)(void))process_batch, METH_FASTCALL,
     "process_batch(lines, first_line_no, ctx) -> (rows, slow, counts)\n\n"
     "Parse and annotate a batch of Hyperquack lines; see _hqfast.c for ctx."},
    {"process_batch_columns", (PyCFunction)(void (*)(void))process_batch_columns, METH_FASTCALL,
     "process_batch_columns(lines, first_line_no, ctx) -> (columns, slow, slow_at, counts)\n\n"
     "process_batch writing one list per column of COLUMNS (in that order) instead of row\n"
     "dicts; the rows of the slow line slow[k] belong at row position slow_at[k]."},
    {"process_batch_arrow", (PyCFunction)(void (*)(void))process_batch_arrow, METH_FASTCALL,
     "process_batch_arrow(lines, first_line_no, ctx) -> (columns, slow, slow_at, counts)\n\n"
     "process_batch_columns with the columns whose COLUMN_KINDS entry is not 'list' as\n"
     "Arrow buffers: (length, null_count, validity bytes or None, values bytes, UTF-8\n"
     "bytes or None); 'utf8': int32 offsets, 'int64': values, 'bool': packed bits;\n"
     "'list_utf8': int32 offsets into the items, and (items' int32 offsets, UTF-8 bytes)\n"
     "in place of the UTF-8 bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hqfast", "Native Hyperquack parse + classify path.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__hqfast(void)
{
#define INIT_KEY(name)                                      \
    if ((K_##name = PyUnicode_InternFromString(#name)) == NULL) { \
        return NULL;                                        \
    }
    KEYS(INIT_KEY)
#undef INIT_KEY
    PyObject *cols[NCOL] = {
        [C_server_ip] = K_server_ip,
        [C_measurement_id] = K_measurement_id,
        [C_source_line] = K_source_line,
        [C_anomaly] = K_no_response_in_measurement_matches_template,
        [C_controls_failed] = K_controls_failed,
        [C_stateful] = K_stateful_block,
        [C_domain] = K_domain,
        [C_is_control] = K_domain_is_control,
        [C_category] = K_domain_category,
        [C_date] = K_date,
        [C_start] = K_start_time,
        [C_end] = K_end_time,
        [C_retry] = K_retry,
        [C_error] = K_received_error,
        [C_matches] = K_matches_template,
        [C_status] = K_received_status,
        [C_headers] = K_received_headers,
        [C_body] = K_received_body,
        [C_tls_version] = K_received_tls_version,
        [C_tls_cipher] = K_received_tls_cipher_suite,
        [C_cert] = K_received_tls_cert,
        [C_cert_cn] = K_received_tls_cert_common_name,
        [C_cert_issuer] = K_received_tls_cert_issuer,
        [C_cert_alt] = K_received_tls_cert_alternative_names,
        [C_cert_match] = K_received_tls_cert_matches_domain,
        [C_known] = K_is_known_blockpage,
        [C_signature] = K_page_signature,
        [C_outcome] = K_outcome,
        [C_rule_id] = K_outcome_rule_id,
    };
    memcpy(COLK, cols, sizeof cols);
    PyObject *r1[R1_N] = {K_Server, K_Keyword, K_Retries, K_Results, K_Blocked, K_FailSanity,
                          K_StatefulBlock};
    PyObject *t1[T1_N] = {K_Sent, K_Received, K_Success, K_Error, K_StartTime, K_EndTime};
    PyObject *r2[R2_N] = {K_vp, K_test_url, K_response, K_anomaly, K_controls_failed,
                          K_stateful_block};
    PyObject *t2[T2_N] = {K_matches_template, K_response, K_error, K_control_url,
                          K_start_time, K_end_time};
    memcpy(R1_KEYS, r1, sizeof r1);
    memcpy(T1_KEYS, t1, sizeof t1);
    memcpy(R2_KEYS, r2, sizeof r2);
    memcpy(T2_KEYS, t2, sizeof t2);
    if ((S_empty = PyUnicode_FromString("")) == NULL ||
        (S_crlf = PyUnicode_InternFromString("\r\n")) == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* COLUMNS: the row columns this module writes, checked against the row schema by the
     * Python side before the module is used (a renamed column must not go unnoticed);
     * process_batch_columns returns its column lists in this order. */
    PyObject *names = PyTuple_New(NCOL);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < NCOL; i++) {
        Py_INCREF(COLK[i]);
        PyTuple_SET_ITEM(names, i, COLK[i]);
    }
    if (PyModule_AddObject(m, "COLUMNS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    /* COLUMN_KINDS: per column of COLUMNS, how process_batch_arrow returns it. */
    PyObject *kinds = PyTuple_New(NCOL);
    if (kinds == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < NCOL; i++) {
        PyObject *k = PyUnicode_InternFromString(KIND_NAMES[COL_KIND[i]]);
        if (k == NULL) {
            Py_DECREF(kinds);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(kinds, i, k);
    }
    if (PyModule_AddObject(m, "COLUMN_KINDS", kinds) < 0) {
        Py_DECREF(kinds);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
