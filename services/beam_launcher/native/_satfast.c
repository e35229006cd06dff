/*
 * _satfast: the Satellite v2.2 results.json flattening of
 * services/beam_launcher/satellite/parse.py (flatten_observation -> _flatten_v2_2) in C.
 *
 * The Python code is the reference. This module only handles records of the ordinary
 * v2.2 shape whose every value has the expected type; for anything else (other formats,
 * wrong types, missing fields, timestamps outside the Go layout, invalid JSON, blank
 * lines, ...) it hands the line back to Python, which then produces the rows or the dead
 * letter exactly as without this module.
 *
 * API (used by services/beam_launcher/satellite/batch.py):
 *
 *   configure(row_template, answer_template, repeated_answer_fields,
 *             matches_template, match_tags, control_domains, control_ips) -> None
 *   flatten_v2_2_batch(lines, first, loads, digest, source, source_file,
 *                      pipeline_version, trusted) -> tuple
 *
 * flatten_v2_2_batch returns (rows, fast_lines, slow):
 *   rows       -> the rows (stamped with _row_id) of the lines done in C, in line order;
 *   fast_lines -> how many lines were done in C;
 *   slow       -> [(offset, position in rows, record or None)] for the other lines, in
 *                 order: the caller flattens the decoded record (a dict) in Python, or
 *                 handles the whole line when it is None (blank, not an object, invalid
 *                 JSON, not bytes), and splices the rows in at that position.
 * It has no side effects on its arguments: if it raises, the caller can redo the batch
 * in Python. The cyclic GC is paused while a batch is built (see flatten_v2_2_batch).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define API_VERSION 2

/* Return codes of the per-record helpers. */
#define RC_ERROR (-1) /* a Python exception is set */
#define RC_SLOW 0     /* not the ordinary shape: leave it to Python */
#define RC_OK 1

/* --- configuration (set once by configure()) -------------------------------------- */

static PyObject *g_row_template;      /* dict: every column -> None */
static PyObject *g_answer_template;   /* dict: every answer field -> None */
static PyObject *g_repeated_fields;   /* tuple of answer field names set to [] */
static PyObject *g_matches_template;  /* dict: matches_control fields -> False */
static PyObject *g_match_tags;        /* dict: matched tag -> matches_control field */
#define MAX_TAGS 8 /* matched tags known to _MATCH_TAGS (5 today) */
#define MAX_TAGS_CACHED MAX_TAGS
#define MAX_TAG_LEN 32
static char g_tag_names[MAX_TAGS][MAX_TAG_LEN]; /* the keys of g_match_tags (ASCII) */
static Py_ssize_t g_tag_lens[MAX_TAGS];
static PyObject *g_tag_fields[MAX_TAGS];        /* their values (owned) */
static int g_n_tags;
static PyObject *g_control_ips;       /* frozenset of resolver IPs */

#define MAX_CONTROL_DOMAINS 64
#define MAX_CONTROL_DOMAIN_LEN 128
static char g_control_domains[MAX_CONTROL_DOMAINS][MAX_CONTROL_DOMAIN_LEN];
static Py_ssize_t g_control_domain_lens[MAX_CONTROL_DOMAINS];
static int g_n_control_domains;
static Py_ssize_t g_max_control_domain_len;
static int g_configured;

/* --- interned strings -------------------------------------------------------------- */

/* Row and answer column names (the record's own keys are matched by KeyTable). */
#define KEYS(X)                                                                          \
    X(start_time) X(end_time) X(untagged_controls) X(untagged_response) X(exclude_reason) \
    X(anomaly) X(excluded) X(has_type_a) X(domain) X(domain_is_control) X(date) X(retry) \
    X(resolver_ip) X(resolver_is_trusted) X(resolver_country) X(received_error)          \
    X(received_rcode) X(answers) X(success) X(domain_controls_failed)                    \
    X(average_confidence) X(measurement_id) X(source) X(source_file) X(source_line)      \
    X(pipeline_version) X(_format) X(_warnings) X(_row_id) X(ip) X(asn) X(as_name)       \
    X(censys_http_body_hash) X(censys_ip_cert) X(matches_control) X(match_confidence)

#define DECLARE_KEY(name) static PyObject *k_##name;
KEYS(DECLARE_KEY)
#undef DECLARE_KEY

static PyObject *s_v2_2;          /* "v2.2" */
static PyObject *s_space;         /* " " */
static PyObject *s_length_warning; /* "confidence_matches_length_mismatch" */

static int
intern_all(void)
{
#define INTERN_KEY(name)                                  \
    k_##name = PyUnicode_InternFromString(#name);         \
    if (k_##name == NULL) return -1;
    KEYS(INTERN_KEY)
#undef INTERN_KEY
    s_v2_2 = PyUnicode_InternFromString("v2.2");
    if (s_v2_2 == NULL) return -1;
    s_space = PyUnicode_InternFromString(" ");
    if (s_space == NULL) return -1;
    s_length_warning = PyUnicode_InternFromString("confidence_matches_length_mismatch");
    if (s_length_warning == NULL) return -1;
    return 0;
}

/* --- small helpers ------------------------------------------------------------------ */

/* Set dict[key] = value and drop our reference to value (value may be NULL: error). */
static inline int
set_steal(PyObject *dict, PyObject *key, PyObject *value)
{
    if (value == NULL) return -1;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc;
}

/* An ASCII str built from a C buffer. */
static PyObject *
ascii_str(const char *buf, Py_ssize_t len)
{
    PyObject *out = PyUnicode_New(len, 127);
    if (out == NULL) return NULL;
    memcpy(PyUnicode_1BYTE_DATA(out), buf, (size_t)len);
    return out;
}

/*
 * Optional bool (_opt_bool): *out = borrowed None/True/False.
 * value NULL means the key was absent (same as None). Returns RC_OK or RC_SLOW.
 */
static inline int
opt_bool(PyObject *value, PyObject **out)
{
    if (value == NULL || value == Py_None) {
        *out = Py_None;
        return RC_OK;
    }
    if (value == Py_True || value == Py_False) {
        *out = value;
        return RC_OK;
    }
    return RC_SLOW;
}

/* Optional string that may only be None or an exact str (borrowed, NULL for None). */
static inline int
opt_str(PyObject *value, PyObject **out)
{
    if (value == NULL || value == Py_None) {
        *out = NULL;
        return RC_OK;
    }
    if (PyUnicode_CheckExact(value)) {
        *out = value;
        return RC_OK;
    }
    return RC_SLOW;
}

/*
 * _opt_number: None -> None, int -> float(int), float -> itself (new reference in
 * *out). Bools, strings, ints too large for a double: RC_SLOW.
 */
static int
opt_number(PyObject *value, PyObject **out)
{
    if (value == NULL || value == Py_None) {
        *out = Py_NewRef(Py_None);
        return RC_OK;
    }
    if (PyFloat_CheckExact(value)) {
        *out = Py_NewRef(value);
        return RC_OK;
    }
    if (PyLong_CheckExact(value)) {
        double d = PyLong_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return RC_ERROR;
            PyErr_Clear();
            return RC_SLOW;
        }
        *out = PyFloat_FromDouble(d);
        return *out == NULL ? RC_ERROR : RC_OK;
    }
    return RC_SLOW;
}

/* _is_control_domain for an ASCII domain: lower(), rstrip("."), then membership. */
static int
is_control_domain(PyObject *domain)
{
    const char *s = (const char *)PyUnicode_1BYTE_DATA(domain);
    Py_ssize_t n = PyUnicode_GET_LENGTH(domain);
    while (n > 0 && s[n - 1] == '.') n--;
    if (n > g_max_control_domain_len) return 0;
    char buf[MAX_CONTROL_DOMAIN_LEN];
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        buf[i] = (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
    }
    for (int i = 0; i < g_n_control_domains; i++) {
        if (g_control_domain_lens[i] == n && memcmp(g_control_domains[i], buf, (size_t)n) == 0)
            return 1;
    }
    return 0;
}

/* --- timestamps --------------------------------------------------------------------- */

static inline int
digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) return 29;
    return days[month - 1];
}

#define ISO_MAX 40

/*
 * go_timestamp for the Go layout only: "YYYY-MM-DD HH:MM:SS[.f{1,9}] ±hhmm[ <anything>]"
 * in ASCII, single spaces, with a valid calendar date and clock. Writes the ISO form
 * "YYYY-MM-DDTHH:MM:SS[.f{1,6}]±hh:mm" (the date is its first 10 characters).
 * Everything else (RFC 3339, other spacing, 24:00, leap seconds, ...) is RC_SLOW: the
 * Python path decides.
 */
static int
go_time(PyObject *value, char *iso, Py_ssize_t *iso_len)
{
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value)) return RC_SLOW;
    const char *s = (const char *)PyUnicode_1BYTE_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    int year, month, day, hour, minute, second, oh, om;
    if (n < 25) return RC_SLOW;
    if (!digits(s, 4, &year) || s[4] != '-' || !digits(s + 5, 2, &month) || s[7] != '-' ||
        !digits(s + 8, 2, &day) || s[10] != ' ' || !digits(s + 11, 2, &hour) ||
        s[13] != ':' || !digits(s + 14, 2, &minute) || s[16] != ':' ||
        !digits(s + 17, 2, &second))
        return RC_SLOW;
    Py_ssize_t p = 19;
    Py_ssize_t frac = 0;
    if (s[p] == '.') {
        p++;
        while (p < n && s[p] >= '0' && s[p] <= '9') {
            p++;
            frac++;
        }
        if (frac < 1 || frac > 9) return RC_SLOW;
    }
    if (p + 6 > n || s[p] != ' ' || (s[p + 1] != '+' && s[p + 1] != '-')) return RC_SLOW;
    char sign = s[p + 1];
    if (!digits(s + p + 2, 2, &oh) || !digits(s + p + 4, 2, &om)) return RC_SLOW;
    p += 6;
    if (p != n && s[p] != ' ') return RC_SLOW;
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59 || oh > 23 || om > 59)
        return RC_SLOW;
    memcpy(iso, s, 10);
    iso[10] = 'T';
    memcpy(iso + 11, s + 11, 8);
    Py_ssize_t q = 19;
    if (frac) {
        Py_ssize_t keep = frac < 6 ? frac : 6;
        memcpy(iso + q, s + 19, (size_t)(keep + 1)); /* '.' and the digits kept */
        q += keep + 1;
    }
    iso[q++] = sign;
    iso[q++] = s[p - 4]; /* hh */
    iso[q++] = s[p - 3];
    iso[q++] = ':';
    iso[q++] = s[p - 2]; /* mm */
    iso[q++] = s[p - 1];
    *iso_len = q;
    return RC_OK;
}

/* --- key scanning ----------------------------------------------------------------------
 *
 * orjson builds its dicts with general (not str-only) key tables and its own key objects,
 * so every PyDict_GetItem on them ends in a rich comparison. One pass over the items,
 * matching the few names we want by length and bytes, is several times cheaper and
 * gives the same values (a JSON object's keys are distinct strings).
 */

typedef struct {
    const char *name;
    Py_ssize_t len;
} KeySpec;

#define KS(s) {s, (Py_ssize_t)(sizeof(s) - 1)}

enum { R_VP, R_TEST_URL, R_RESPONSE, R_PASSED, R_LOCATION, R_START, R_END, R_CONFIDENCE,
       R_ANOMALY, R_EXCLUDED, R_REASON, R_N };
static const KeySpec REC_KEYS[R_N] = {
    KS("vp"),         KS("test_url"), KS("response"),   KS("passed_liveness"),
    KS("location"),   KS("start_time"), KS("end_time"), KS("confidence"),
    KS("anomaly"),    KS("excluded"), KS("exclude_reason"),
};
enum { C_AVERAGE, C_MATCHES, C_UNTAGGED_CONTROLS, C_UNTAGGED_RESPONSE, C_N };
static const KeySpec CONF_KEYS[C_N] = {
    KS("average"), KS("matches"), KS("untagged_controls"), KS("untagged_response"),
};
enum { L_COUNTRY, L_N };
static const KeySpec LOC_KEYS[L_N] = {KS("country_code")};
enum { T_URL, T_RCODE, T_RESPONSE, T_HAS_TYPE_A, T_ERROR, T_N };
static const KeySpec RT_KEYS[T_N] = {
    KS("url"), KS("rcode"), KS("response"), KS("has_type_a"), KS("error"),
};
enum { A_HTTP, A_CERT, A_ASNUM, A_ASNAME, A_MATCHED, A_N };
static const KeySpec TAG_KEYS[A_N] = {
    KS("http"), KS("cert"), KS("asnum"), KS("asname"), KS("matched"),
};

/* The names of one KeySpec array, indexed by length (all names are shorter than 24). */
#define MAX_NAME 24
#define MAX_SPECS 16
typedef struct {
    const KeySpec *spec;
    int n;
    int id;                      /* bit of this table in BatchContext.learned */
    signed char head[MAX_NAME];  /* first spec with that length, or -1 */
    signed char next[MAX_SPECS]; /* next spec with the same length, or -1 */
    PyObject *keys[MAX_SPECS];   /* key objects for lookups (owned), see fetch() */
} KeyTable;

static KeyTable REC_T, CONF_T, LOC_T, RT_T, TAG_T;

static int
table_init(KeyTable *t, const KeySpec *spec, int n, int id)
{
    t->spec = spec;
    t->n = n;
    t->id = id;
    for (int l = 0; l < MAX_NAME; l++) t->head[l] = -1;
    for (int i = n - 1; i >= 0; i--) { /* prepend: chains keep spec order */
        t->next[i] = t->head[spec[i].len];
        t->head[spec[i].len] = (signed char)i;
        t->keys[i] = PyUnicode_InternFromString(spec[i].name);
        if (t->keys[i] == NULL) return -1;
    }
    return 0;
}

/*
 * out[i] = dict[t->spec[i].name] (borrowed) or NULL when absent, by one pass over the
 * items; the key objects found are remembered in t->keys. RC_SLOW for a key that is not
 * an exact str (never from orjson).
 */
static int
scan(PyObject *dict, KeyTable *t, PyObject **out)
{
    for (int i = 0; i < t->n; i++) out[i] = NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) return RC_SLOW;
        Py_ssize_t len = PyUnicode_GET_LENGTH(key);
        if (len >= MAX_NAME) continue;
        int i = t->head[len];
        if (i < 0 || !PyUnicode_IS_ASCII(key)) continue; /* no name of that length */
        const char *s = (const char *)PyUnicode_1BYTE_DATA(key);
        for (; i >= 0; i = t->next[i]) {
            if (t->spec[i].name[0] == s[0] && memcmp(t->spec[i].name, s, (size_t)len) == 0) {
                out[i] = value;
                if (t->keys[i] != key) Py_SETREF(t->keys[i], Py_NewRef(key));
                break;
            }
        }
    }
    return RC_OK;
}

/*
 * Like scan(), by dict lookups. orjson reuses one key object per distinct key string,
 * so with the objects scan() remembered each lookup ends at an identity match instead
 * of a string comparison. Any equal str finds the same value, so a stale object only
 * costs time. The first dict of each table in a batch is scanned (to learn the objects).
 */
static int
fetch(PyObject *dict, KeyTable *t, PyObject **out, unsigned *learned)
{
    if (!(*learned & (1u << t->id))) {
        *learned |= 1u << t->id;
        return scan(dict, t, out);
    }
    for (int i = 0; i < t->n; i++) {
        out[i] = PyDict_GetItemWithError(dict, t->keys[i]);
        if (out[i] == NULL && PyErr_Occurred()) return RC_ERROR;
    }
    return RC_OK;
}

/* --- one record --------------------------------------------------------------------- */

typedef struct {
    PyObject *template; /* row template with this batch's provenance */
    PyObject *digest;   /* str, at most 64 ASCII characters */
    int trusted;        /* the file marks every resolver as trusted */
    /*
     * Records of a batch mostly share their flags: the last record's flag values and a
     * copy of `template` with them set, reused while they stay the same (owned).
     */
    PyObject *flag_template;
    PyObject *flags[5]; /* anomaly, domain_controls_failed, untagged_*, excluded */
    PyObject *reason;   /* exclude_reason value (str) or NULL for None */
    PyObject *date;     /* the last date string, reused while equal */
    unsigned learned;   /* KeyTable ids whose key objects this batch has seen */
    PyObject *matches[1 << MAX_TAGS_CACHED]; /* matches_control per tag mask (owned) */
} BatchContext;

static void
batch_clear(BatchContext *bc)
{
    for (int i = 0; i < (1 << MAX_TAGS_CACHED); i++) Py_CLEAR(bc->matches[i]);
    Py_CLEAR(bc->template);
    Py_CLEAR(bc->flag_template);
    Py_CLEAR(bc->reason);
    Py_CLEAR(bc->date);
}

/* The template with the record flags set (borrowed from bc), or NULL on error. */
static PyObject *
flag_template(BatchContext *bc, PyObject *const flags[5], PyObject *reason)
{
    if (bc->flag_template != NULL) {
        int same = 1;
        for (int i = 0; i < 5 && same; i++) same = bc->flags[i] == flags[i];
        if (same) {
            if (reason == NULL || bc->reason == NULL) {
                same = reason == bc->reason;
            } else {
                same = PyUnicode_GET_LENGTH(reason) == PyUnicode_GET_LENGTH(bc->reason) &&
                       PyUnicode_Compare(reason, bc->reason) == 0;
                if (PyErr_Occurred()) return NULL;
            }
        }
        if (same) return bc->flag_template;
    }
    PyObject *keys[5] = {k_anomaly, k_domain_controls_failed, k_untagged_controls,
                         k_untagged_response, k_excluded};
    PyObject *t = PyDict_Copy(bc->template);
    if (t == NULL) return NULL;
    for (int i = 0; i < 5; i++) { /* None is the template's value already */
        if (flags[i] != Py_None && PyDict_SetItem(t, keys[i], flags[i]) < 0) {
            Py_DECREF(t);
            return NULL;
        }
    }
    if (reason != NULL && PyDict_SetItem(t, k_exclude_reason, reason) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    Py_XSETREF(bc->flag_template, t);
    for (int i = 0; i < 5; i++) bc->flags[i] = flags[i]; /* immortal-ish singletons */
    Py_XINCREF(reason);
    Py_XSETREF(bc->reason, reason);
    return t;
}

/* The date string "YYYY-MM-DD" (new reference), shared while it does not change. */
static PyObject *
date_str(BatchContext *bc, const char *iso)
{
    if (bc->date == NULL || memcmp(PyUnicode_1BYTE_DATA(bc->date), iso, 10) != 0) {
        PyObject *d = ascii_str(iso, 10);
        if (d == NULL) return NULL;
        Py_XSETREF(bc->date, d);
    }
    return Py_NewRef(bc->date);
}

/*
 * The answers of one roundtrip (_v2_2_answers) with match_confidence from `matches`
 * (NULL: none; paired only when the lengths agree, *mismatch says when they do not).
 * *out = new list, or RC_SLOW / RC_ERROR.
 */
static int
v2_2_answers(PyObject *inner, PyObject *matches, PyObject **out, int *mismatch,
             BatchContext *bc)
{
    Py_ssize_t n = PyDict_GET_SIZE(inner);
    *mismatch = 0;
    if (matches != NULL && n > 0 && PyList_GET_SIZE(matches) != n) {
        *mismatch = 1;
        matches = NULL;
    }
    PyObject *answers = PyList_New(n);
    if (answers == NULL) return RC_ERROR;
    Py_ssize_t pos = 0, index = 0;
    PyObject *ip, *tags;
    Py_ssize_t n_repeated = PyTuple_GET_SIZE(g_repeated_fields);
    while (PyDict_Next(inner, &pos, &ip, &tags)) {
        PyObject *t[A_N];
        if (index >= n || !PyUnicode_CheckExact(ip) || !PyDict_CheckExact(tags)) goto slow;
        int rc = fetch(tags, &TAG_T, t, &bc->learned);
        if (rc == RC_ERROR) goto error;
        if (rc == RC_SLOW) goto slow;
        PyObject *http, *cert, *asname;
        if (opt_str(t[A_HTTP], &http) != RC_OK || opt_str(t[A_CERT], &cert) != RC_OK ||
            opt_str(t[A_ASNAME], &asname) != RC_OK)
            goto slow;
        PyObject *asnum = t[A_ASNUM] == Py_None ? NULL : t[A_ASNUM];
        if (asnum != NULL && !PyLong_CheckExact(asnum)) goto slow; /* str, bool, float */
        PyObject *matched = t[A_MATCHED] == Py_None ? NULL : t[A_MATCHED];
        if (matched != NULL) {
            if (!PyList_CheckExact(matched)) goto slow;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(matched); i++) {
                if (!PyUnicode_CheckExact(PyList_GET_ITEM(matched, i))) goto slow;
            }
        }
        PyObject *answer = PyDict_Copy(g_answer_template);
        if (answer == NULL) goto error;
        PyList_SET_ITEM(answers, index, answer); /* the list owns it */
        index++;
        if (PyDict_SetItem(answer, k_ip, ip) < 0) goto error;
        for (Py_ssize_t i = 0; i < n_repeated; i++) {
            if (set_steal(answer, PyTuple_GET_ITEM(g_repeated_fields, i), PyList_New(0)) < 0)
                goto error;
        }
        /* _blank_to_none: None and "" leave the template's None. */
        if (http != NULL && PyUnicode_GET_LENGTH(http) > 0 &&
            PyDict_SetItem(answer, k_censys_http_body_hash, http) < 0)
            goto error;
        if (cert != NULL && PyUnicode_GET_LENGTH(cert) > 0 &&
            PyDict_SetItem(answer, k_censys_ip_cert, cert) < 0)
            goto error;
        if (asnum != NULL && PyDict_SetItem(answer, k_asn, asnum) < 0) goto error;
        if (asname != NULL && PyUnicode_GET_LENGTH(asname) > 0 &&
            PyDict_SetItem(answer, k_as_name, asname) < 0)
            goto error;
        if (matched != NULL) {
            /* _matches_control: which known tags occur (g_match_tags.get(tag), by
             * comparing bytes: the tag strings are new objects each time, so a dict
             * lookup would hash every one of them). */
            unsigned mask = 0;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(matched); i++) {
                PyObject *tag = PyList_GET_ITEM(matched, i);
                if (!PyUnicode_IS_ASCII(tag)) continue; /* cannot equal an ASCII tag */
                Py_ssize_t len = PyUnicode_GET_LENGTH(tag);
                const char *text = (const char *)PyUnicode_1BYTE_DATA(tag);
                for (int k = 0; k < g_n_tags; k++) {
                    if (g_tag_lens[k] == len && memcmp(g_tag_names[k], text, (size_t)len) == 0) {
                        mask |= 1u << k;
                        break;
                    }
                }
            }
            /* One dict per tag combination and batch, copied for each answer. */
            PyObject *shared = bc->matches[mask];
            if (shared == NULL) {
                shared = PyDict_Copy(g_matches_template);
                if (shared == NULL) goto error;
                for (int k = 0; k < g_n_tags; k++) {
                    if ((mask & (1u << k)) &&
                        PyDict_SetItem(shared, g_tag_fields[k], Py_True) < 0) {
                        Py_DECREF(shared);
                        goto error;
                    }
                }
                bc->matches[mask] = shared;
            }
            if (set_steal(answer, k_matches_control, PyDict_Copy(shared)) < 0) goto error;
        }
        if (matches != NULL) {
            PyObject *m = PyList_GET_ITEM(matches, index - 1);
            if (m != Py_None && PyDict_SetItem(answer, k_match_confidence, m) < 0) goto error;
        }
    }
    if (index != n) goto slow; /* the dict changed size: cannot happen */
    *out = answers;
    return RC_OK;
slow:
    Py_DECREF(answers); /* unset items are NULL: list dealloc skips them */
    return RC_SLOW;
error:
    Py_DECREF(answers);
    return RC_ERROR;
}

/* Append the lowercase hex digits of v, at least `width` of them; returns the count. */
static int
put_hex(char *out, unsigned long long v, int width)
{
    char tmp[32];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    while (n < width) tmp[n++] = '0';
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* Append the decimal digits of v; returns the count. */
static int
put_dec(char *out, unsigned long long v)
{
    char tmp[32];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* measurement id: f"{digest}{line_no:08x}" (line_no >= 0, digest ASCII <= 64 chars). */
static PyObject *
make_measurement_id(PyObject *digest, long long line_no)
{
    char buf[128];
    Py_ssize_t dn = PyUnicode_GET_LENGTH(digest);
    memcpy(buf, PyUnicode_1BYTE_DATA(digest), (size_t)dn);
    int w = put_hex(buf + dn, (unsigned long long)line_no, 8);
    return ascii_str(buf, dn + w);
}

/* f"{mid}:{index}" (mid ASCII <= 96 chars). */
static PyObject *
make_row_id(PyObject *mid, Py_ssize_t index)
{
    char buf[160];
    Py_ssize_t mn = PyUnicode_GET_LENGTH(mid);
    memcpy(buf, PyUnicode_1BYTE_DATA(mid), (size_t)mn);
    buf[mn] = ':';
    int w = put_dec(buf + mn + 1, (unsigned long long)index);
    return ascii_str(buf, mn + 1 + w);
}

/* Everything of one record that its rows share (owned references). */
typedef struct {
    PyObject *base;     /* row with the record-level columns set */
    PyObject *mid;      /* measurement id */
    PyObject *average;  /* confidence.average as float, or None */
    PyObject *matches;  /* confidence.matches as floats/None, or NULL when null */
    PyObject *response; /* borrowed: the roundtrip list */
    PyObject *test_url; /* borrowed */
} RecordParts;

static void
record_parts_clear(RecordParts *parts)
{
    Py_CLEAR(parts->base);
    Py_CLEAR(parts->mid);
    Py_CLEAR(parts->average);
    Py_CLEAR(parts->matches);
}

/*
 * Check the record-level fields (detect_format, _v2_common, _times, confidence,
 * exclude_reason, flags) and build the base row. RC_OK fills *parts.
 */
static int
record_base(PyObject *rec, BatchContext *bc, long long line_no, RecordParts *parts)
{
    PyObject *r[R_N];
    PyObject *reason = NULL;
    int rc;
    rc = fetch(rec, &REC_T, r, &bc->learned);
    if (rc != RC_OK) return rc;

    /* detect_format: ("vp" in rec or "test_url" in rec), response a list, passed_liveness
     * present; then vp and test_url must be strings (_req_str). */
    PyObject *vp = r[R_VP], *test_url = r[R_TEST_URL], *response = r[R_RESPONSE];
    if (vp == NULL || test_url == NULL || response == NULL || r[R_PASSED] == NULL)
        return RC_SLOW;
    if (!PyUnicode_CheckExact(vp) || !PyUnicode_CheckExact(test_url) ||
        !PyList_CheckExact(response))
        return RC_SLOW;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(response); i++) {
        if (!PyDict_CheckExact(PyList_GET_ITEM(response, i))) return RC_SLOW;
    }
    PyObject *passed, *anomaly, *excluded;
    if (opt_bool(r[R_PASSED], &passed) != RC_OK || opt_bool(r[R_ANOMALY], &anomaly) != RC_OK ||
        opt_bool(r[R_EXCLUDED], &excluded) != RC_OK)
        return RC_SLOW;

    /* location.country_code (_blank_to_none) */
    PyObject *country = NULL;
    PyObject *location = r[R_LOCATION];
    if (location != NULL && location != Py_None) {
        PyObject *l[L_N];
        if (!PyDict_CheckExact(location)) return RC_SLOW;
        rc = fetch(location, &LOC_T, l, &bc->learned);
        if (rc != RC_OK) return rc;
        if (opt_str(l[L_COUNTRY], &country) != RC_OK) return RC_SLOW;
        if (country != NULL && PyUnicode_GET_LENGTH(country) == 0) country = NULL;
    }

    /* start_time (required), end_time (None or "" -> None) */
    char start_iso[ISO_MAX], end_iso[ISO_MAX];
    Py_ssize_t start_len = 0, end_len = 0;
    int has_end = 0;
    if (r[R_START] == NULL || go_time(r[R_START], start_iso, &start_len) != RC_OK)
        return RC_SLOW;
    PyObject *end = r[R_END];
    if (end != NULL && end != Py_None) {
        if (!PyUnicode_CheckExact(end)) return RC_SLOW;
        if (PyUnicode_GET_LENGTH(end) > 0) {
            if (go_time(end, end_iso, &end_len) != RC_OK) return RC_SLOW;
            has_end = 1;
        }
    }

    /* exclude_reason: None, or a list of str joined by spaces */
    PyObject *reasons = r[R_REASON] == Py_None ? NULL : r[R_REASON];
    if (reasons != NULL) {
        if (!PyList_CheckExact(reasons)) return RC_SLOW;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(reasons); i++) {
            if (!PyUnicode_CheckExact(PyList_GET_ITEM(reasons, i))) return RC_SLOW;
        }
    }

    /* confidence */
    PyObject *untagged_controls = Py_None, *untagged_response = Py_None;
    PyObject *c[C_N] = {NULL, NULL, NULL, NULL};
    PyObject *confidence = r[R_CONFIDENCE];
    if (confidence != NULL && confidence != Py_None) {
        if (!PyDict_CheckExact(confidence)) return RC_SLOW;
        rc = fetch(confidence, &CONF_T, c, &bc->learned);
        if (rc != RC_OK) return rc;
        if (opt_bool(c[C_UNTAGGED_CONTROLS], &untagged_controls) != RC_OK ||
            opt_bool(c[C_UNTAGGED_RESPONSE], &untagged_response) != RC_OK)
            return RC_SLOW;
        if (c[C_MATCHES] == Py_None) c[C_MATCHES] = NULL;
        if (c[C_MATCHES] != NULL && !PyList_CheckExact(c[C_MATCHES])) return RC_SLOW;
    }

    /* From here on references are owned: leave through `done`. */
    rc = opt_number(c[C_AVERAGE], &parts->average);
    if (rc != RC_OK) goto done;
    if (c[C_MATCHES] != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(c[C_MATCHES]);
        parts->matches = PyList_New(n);
        if (parts->matches == NULL) goto error;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *m = NULL;
            rc = opt_number(PyList_GET_ITEM(c[C_MATCHES], i), &m);
            if (rc != RC_OK) goto done;
            PyList_SET_ITEM(parts->matches, i, m);
        }
    }
    if (reasons != NULL) {
        reason = PyUnicode_Join(s_space, reasons);
        if (reason == NULL) goto error;
    }
    parts->mid = make_measurement_id(bc->digest, line_no);
    if (parts->mid == NULL) goto error;
    PyObject *flags[5] = {anomaly,
                          passed == Py_None ? Py_None : (passed == Py_True ? Py_False : Py_True),
                          untagged_controls, untagged_response, excluded};
    PyObject *shared = flag_template(bc, flags, reason);
    if (shared == NULL) goto error;
    PyObject *base = parts->base = PyDict_Copy(shared);
    if (base == NULL) goto error;
    if (!bc->trusted) {
        int trusted = PySet_Contains(g_control_ips, vp);
        if (trusted < 0) goto error;
        if (PyDict_SetItem(base, k_resolver_is_trusted, trusted ? Py_True : Py_False) < 0)
            goto error;
    }
    if (set_steal(base, k_date, date_str(bc, start_iso)) < 0 ||
        set_steal(base, k_start_time, ascii_str(start_iso, start_len)) < 0 ||
        (has_end && set_steal(base, k_end_time, ascii_str(end_iso, end_len)) < 0) ||
        PyDict_SetItem(base, k_resolver_ip, vp) < 0 ||
        PyDict_SetItem(base, k_measurement_id, parts->mid) < 0 ||
        set_steal(base, k_source_line, PyLong_FromLongLong(line_no)) < 0)
        goto error;
    if (country != NULL && PyDict_SetItem(base, k_resolver_country, country) < 0) goto error;
    Py_XDECREF(reason);
    parts->response = response;
    parts->test_url = test_url;
    return RC_OK;

error:
    rc = RC_ERROR;
done:
    Py_XDECREF(reason);
    record_parts_clear(parts);
    return rc;
}

/*
 * _flatten_v2_2 for one decoded record: its rows (with _row_id) are appended to `rows`.
 * RC_SLOW / RC_ERROR leave `rows` as it was and nothing owned behind.
 */
static int
flatten_record(PyObject *rec, BatchContext *bc, long long line_no, PyObject *rows)
{
    RecordParts parts = {NULL, NULL, NULL, NULL, NULL, NULL};
    PyObject *answers = NULL, *row = NULL;
    Py_ssize_t rows_before = PyList_GET_SIZE(rows);
    int rc = record_base(rec, bc, line_no, &parts);
    if (rc != RC_OK) return rc;

    Py_ssize_t n = PyList_GET_SIZE(parts.response);
    long long retry = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t[T_N];
        rc = fetch(PyList_GET_ITEM(parts.response, i), &RT_T, t, &bc->learned);
        if (rc == RC_ERROR) goto error;
        if (rc == RC_SLOW) goto slow;
        /* domain = url or test_url (ASCII only: Unicode lower() is left to Python) */
        PyObject *domain;
        if (opt_str(t[T_URL], &domain) != RC_OK) goto slow;
        if (domain == NULL || PyUnicode_GET_LENGTH(domain) == 0) domain = parts.test_url;
        if (!PyUnicode_IS_ASCII(domain)) goto slow;
        /* rcode: an int (strings, bools and null: Python) */
        PyObject *rcode = t[T_RCODE];
        if (rcode == NULL || !PyLong_CheckExact(rcode)) goto slow;
        int overflow = 0;
        long long rcode_value = PyLong_AsLongLongAndOverflow(rcode, &overflow);
        if (rcode_value == -1 && PyErr_Occurred()) goto error;
        int success = overflow == 0 && rcode_value == 0;
        /* inner response: None -> {}, else a dict */
        PyObject *inner = t[T_RESPONSE] == Py_None ? NULL : t[T_RESPONSE];
        if (inner != NULL && !PyDict_CheckExact(inner)) goto slow;
        PyObject *has_type_a;
        if (opt_bool(t[T_HAS_TYPE_A], &has_type_a) != RC_OK) goto slow;
        /* error: "null" or "" -> None */
        PyObject *error;
        if (opt_str(t[T_ERROR], &error) != RC_OK) goto slow;
        if (error != NULL && (PyUnicode_GET_LENGTH(error) == 0 ||
                              PyUnicode_CompareWithASCIIString(error, "null") == 0))
            error = NULL;

        int mismatch = 0;
        if (inner != NULL) {
            rc = v2_2_answers(inner, parts.matches, &answers, &mismatch, bc);
            if (rc != RC_OK) goto done;
        } else {
            answers = PyList_New(0);
            if (answers == NULL) goto error;
        }
        Py_ssize_t n_answers = PyList_GET_SIZE(answers);

        int is_control = is_control_domain(domain);
        if (i == n - 1) { /* the last row takes the base itself */
            row = parts.base;
            parts.base = NULL;
        } else {
            row = PyDict_Copy(parts.base);
            if (row == NULL) goto error;
        }
        /* The batch template holds the usual values (see ROW_PRESETS): set the others. */
        if (PyDict_SetItem(row, k_domain, domain) < 0 ||
            (is_control && (PyDict_SetItem(row, k_domain_is_control, Py_True) < 0 ||
                            PyDict_SetItem(row, k_retry, Py_None) < 0)))
            goto error;
        if (!is_control && retry++ > 0 &&
            set_steal(row, k_retry, PyLong_FromLongLong(retry - 1)) < 0)
            goto error;
        if ((!success && (PyDict_SetItem(row, k_received_rcode, rcode) < 0 ||
                          PyDict_SetItem(row, k_success, Py_False) < 0)) ||
            (error != NULL && PyDict_SetItem(row, k_received_error, error) < 0) ||
            (!(success && has_type_a == Py_True) &&
             PyDict_SetItem(row, k_has_type_a, Py_None) < 0))
            goto error;
        rc = PyDict_SetItem(row, k_answers, answers);
        Py_CLEAR(answers);
        if (rc < 0) goto error;
        if (n_answers > 0 && parts.average != Py_None &&
            PyDict_SetItem(row, k_average_confidence, parts.average) < 0)
            goto error;
        if (n_answers > 0 && mismatch) {
            PyObject *warnings = PyList_New(1);
            if (warnings == NULL) goto error;
            PyList_SET_ITEM(warnings, 0, Py_NewRef(s_length_warning));
            if (set_steal(row, k__warnings, warnings) < 0) goto error;
        }
        if (set_steal(row, k__row_id, make_row_id(parts.mid, i)) < 0) goto error;
        rc = PyList_Append(rows, row);
        Py_CLEAR(row);
        if (rc < 0) goto error;
    }
    record_parts_clear(&parts);
    return RC_OK;

slow:
    rc = RC_SLOW;
    goto done;
error:
    rc = RC_ERROR;
done:
    Py_XDECREF(row);
    Py_XDECREF(answers);
    if (PyList_GET_SIZE(rows) > rows_before &&
        PyList_SetSlice(rows, rows_before, PyList_GET_SIZE(rows), NULL) < 0)
        rc = RC_ERROR;
    record_parts_clear(&parts);
    return rc;
}

/* --- module functions --------------------------------------------------------------- */

static PyObject *
flatten_v2_2_batch(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *lines, *first_obj, *loads, *digest, *source, *source_file, *version;
    int trusted;
    if (!PyArg_ParseTuple(args, "O!O!OUUUUp:flatten_v2_2_batch", &PyList_Type, &lines,
                          &PyLong_Type, &first_obj, &loads, &digest, &source, &source_file,
                          &version, &trusted))
        return NULL;
    if (!g_configured) {
        PyErr_SetString(PyExc_RuntimeError, "_satfast.configure() was not called");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(digest) || PyUnicode_GET_LENGTH(digest) > 64) {
        PyErr_SetString(PyExc_ValueError, "digest must be at most 64 ASCII characters");
        return NULL;
    }
    long long first = PyLong_AsLongLong(first_obj);
    if (first == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(lines);
    if (first < 0 || first > ((long long)1 << 60) - n) {
        PyErr_SetString(PyExc_ValueError, "first line number out of range");
        return NULL;
    }
    /*
     * The row template with what every row of the batch shares (_RowMaker's base) and
     * ROW_PRESETS: the values of an ordinary roundtrip (test domain, first query, rcode
     * 0, an A record), which flatten_record() overwrites when a row differs. rcode 0 is
     * the small int 0, equal to (and of the same type as) the record's own 0.
     */
    BatchContext bc = {NULL, digest, trusted, NULL, {NULL}, NULL, NULL, 0, {NULL}};
    bc.template = PyDict_Copy(g_row_template);
    if (bc.template == NULL) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL || PyDict_SetItem(bc.template, k_domain_is_control, Py_False) < 0 ||
        PyDict_SetItem(bc.template, k_retry, zero) < 0 ||
        PyDict_SetItem(bc.template, k_received_rcode, zero) < 0 ||
        PyDict_SetItem(bc.template, k_success, Py_True) < 0 ||
        PyDict_SetItem(bc.template, k_has_type_a, Py_True) < 0) {
        Py_XDECREF(zero);
        batch_clear(&bc);
        return NULL;
    }
    Py_DECREF(zero);
    if (PyDict_SetItem(bc.template, k_source, source) < 0 ||
        PyDict_SetItem(bc.template, k_source_file, source_file) < 0 ||
        PyDict_SetItem(bc.template, k_pipeline_version, version) < 0 ||
        PyDict_SetItem(bc.template, k__format, s_v2_2) < 0 ||
        (trusted && PyDict_SetItem(bc.template, k_resolver_is_trusted, Py_True) < 0)) {
        batch_clear(&bc);
        return NULL;
    }
    PyObject *rows = PyList_New(0), *slow = PyList_New(0);
    if (rows == NULL || slow == NULL) {
        Py_XDECREF(rows);
        Py_XDECREF(slow);
        batch_clear(&bc);
        return NULL;
    }
    Py_ssize_t fast_lines = 0;
    /*
     * No cyclic GC passes while the batch is built: every container made here is either
     * freed by refcounting at once (decoded records) or kept in the result (rows), so the
     * passes the allocations would trigger only re-walk live rows. The count of new
     * objects is kept, so the first allocation after the batch runs the usual collection.
     */
    int gc_was_enabled = PyGC_Disable();
    /* `loads` is only expected to be orjson.loads, but re-reading the size and holding
     * the line keeps this safe should a callable change the list. */
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(lines); i++) {
        PyObject *raw = PyList_GET_ITEM(lines, i);
        PyObject *rec = NULL; /* stays NULL: Python handles the whole line */
        int done = 0;         /* the line's rows were made here */
        if (PyBytes_CheckExact(raw)) {
            Py_INCREF(raw);
            const char *data = PyBytes_AS_STRING(raw);
            Py_ssize_t len = PyBytes_GET_SIZE(raw);
            Py_ssize_t p = 0;
            while (p < len && (data[p] == ' ' || data[p] == '\t' || data[p] == '\r' ||
                               data[p] == '\n'))
                p++;
            if (p < len && data[p] == '{') { /* else blank, or not an object */
                /* loads(raw) == loads(raw.rstrip(b"\r\n")): both are JSON whitespace */
                rec = PyObject_CallOneArg(loads, raw);
                if (rec == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                        Py_DECREF(raw);
                        goto error;
                    }
                    PyErr_Clear(); /* invalid JSON: Python redoes it for the message */
                } else if (!PyDict_CheckExact(rec)) {
                    Py_CLEAR(rec);
                } else {
                    int rc = flatten_record(rec, &bc, first + i, rows);
                    if (rc == RC_ERROR) {
                        Py_DECREF(rec);
                        Py_DECREF(raw);
                        goto error;
                    }
                    if (rc == RC_OK) {
                        Py_CLEAR(rec);
                        done = 1;
                    } /* RC_SLOW: hand the decoded record to Python */
                }
            }
            Py_DECREF(raw);
        }
        if (done) {
            fast_lines++;
            continue;
        }
        /* (offset, where its rows go in `rows`, decoded record or None) */
        PyObject *entry = Py_BuildValue("(nnO)", i, PyList_GET_SIZE(rows),
                                        rec == NULL ? Py_None : rec);
        Py_XDECREF(rec);
        if (entry == NULL) goto error;
        int rc = PyList_Append(slow, entry);
        Py_DECREF(entry);
        if (rc < 0) goto error;
    }
    if (gc_was_enabled) PyGC_Enable();
    batch_clear(&bc);
    PyObject *count = PyLong_FromSsize_t(fast_lines);
    PyObject *result = count == NULL ? NULL : PyTuple_New(3);
    if (result == NULL) {
        Py_XDECREF(count);
        Py_DECREF(rows);
        Py_DECREF(slow);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, rows);
    PyTuple_SET_ITEM(result, 1, count);
    PyTuple_SET_ITEM(result, 2, slow);
    return result;
error:
    if (gc_was_enabled) PyGC_Enable();
    batch_clear(&bc);
    Py_DECREF(rows);
    Py_DECREF(slow);
    return NULL;
}

static void
clear_config(void)
{
    Py_CLEAR(g_row_template);
    Py_CLEAR(g_answer_template);
    Py_CLEAR(g_repeated_fields);
    Py_CLEAR(g_matches_template);
    Py_CLEAR(g_match_tags);
    for (int i = 0; i < g_n_tags; i++) Py_CLEAR(g_tag_fields[i]);
    g_n_tags = 0;
    Py_CLEAR(g_control_ips);
    g_n_control_domains = 0;
    g_max_control_domain_len = 0;
    g_configured = 0;
}

static PyObject *
configure(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *row_t, *answer_t, *repeated, *matches_t, *match_tags, *domains, *ips;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!OO:configure", &PyDict_Type, &row_t,
                          &PyDict_Type, &answer_t, &PyTuple_Type, &repeated, &PyDict_Type,
                          &matches_t, &PyDict_Type, &match_tags, &domains, &ips))
        return NULL;
    if (!PyFrozenSet_CheckExact(domains) || !PyFrozenSet_CheckExact(ips)) {
        PyErr_SetString(PyExc_TypeError, "control_domains and control_ips must be frozensets");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(repeated); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(repeated, i))) {
            PyErr_SetString(PyExc_TypeError, "repeated_answer_fields must be strings");
            return NULL;
        }
    }
    char names[MAX_CONTROL_DOMAINS][MAX_CONTROL_DOMAIN_LEN];
    Py_ssize_t lens[MAX_CONTROL_DOMAINS];
    int count = 0;
    Py_ssize_t max_len = 0;
    PyObject *it = PyObject_GetIter(domains);
    if (it == NULL) return NULL;
    PyObject *name;
    while ((name = PyIter_Next(it)) != NULL) {
        if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name) ||
            PyUnicode_GET_LENGTH(name) >= MAX_CONTROL_DOMAIN_LEN ||
            count >= MAX_CONTROL_DOMAINS) {
            Py_DECREF(name);
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "control domains must be short ASCII strings");
            return NULL;
        }
        lens[count] = PyUnicode_GET_LENGTH(name);
        memcpy(names[count], PyUnicode_1BYTE_DATA(name), (size_t)lens[count]);
        if (lens[count] > max_len) max_len = lens[count];
        count++;
        Py_DECREF(name);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;

    char tag_names[MAX_TAGS][MAX_TAG_LEN];
    Py_ssize_t tag_lens[MAX_TAGS];
    PyObject *tag_fields[MAX_TAGS];
    int n_tags = 0;
    Py_ssize_t tpos = 0;
    PyObject *tag, *field;
    while (PyDict_Next(match_tags, &tpos, &tag, &field)) {
        if (!PyUnicode_CheckExact(tag) || !PyUnicode_IS_ASCII(tag) ||
            PyUnicode_GET_LENGTH(tag) >= MAX_TAG_LEN || !PyUnicode_CheckExact(field) ||
            n_tags >= MAX_TAGS) {
            PyErr_SetString(PyExc_ValueError, "match_tags must map short ASCII str to str");
            return NULL;
        }
        tag_lens[n_tags] = PyUnicode_GET_LENGTH(tag);
        memcpy(tag_names[n_tags], PyUnicode_1BYTE_DATA(tag), (size_t)tag_lens[n_tags]);
        tag_fields[n_tags] = field;
        n_tags++;
    }

    clear_config();
    memcpy(g_tag_names, tag_names, sizeof(tag_names));
    memcpy(g_tag_lens, tag_lens, sizeof(tag_lens));
    for (int i = 0; i < n_tags; i++) g_tag_fields[i] = Py_NewRef(tag_fields[i]);
    g_n_tags = n_tags;
    g_row_template = Py_NewRef(row_t);
    g_answer_template = Py_NewRef(answer_t);
    g_repeated_fields = Py_NewRef(repeated);
    g_matches_template = Py_NewRef(matches_t);
    g_match_tags = Py_NewRef(match_tags);
    g_control_ips = Py_NewRef(ips);
    memcpy(g_control_domains, names, sizeof(names));
    memcpy(g_control_domain_lens, lens, sizeof(lens));
    g_n_control_domains = count;
    g_max_control_domain_len = max_len;
    g_configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(row_template, answer_template, repeated_answer_fields, matches_template, "
     "match_tags, control_domains, control_ips): the templates and constants of "
     "satellite/parse.py."},
    {"flatten_v2_2_batch", flatten_v2_2_batch, METH_VARARGS,
     "flatten_v2_2_batch(lines, first, loads, digest, source, source_file, "
     "pipeline_version, trusted) -> (rows, fast_lines, slow): the rows of the lines done "
     "in C, their count, and [(offset, position in rows, record or None)] for the lines "
     "left to Python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_satfast",
    "Satellite v2.2 results.json flattening in C (satellite/parse.py is the reference).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__satfast(void)
{
    if (intern_all() < 0) return NULL;
    if (table_init(&REC_T, REC_KEYS, R_N, 0) < 0 || table_init(&CONF_T, CONF_KEYS, C_N, 1) < 0 ||
        table_init(&LOC_T, LOC_KEYS, L_N, 2) < 0 || table_init(&RT_T, RT_KEYS, T_N, 3) < 0 ||
        table_init(&TAG_T, TAG_KEYS, A_N, 4) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
