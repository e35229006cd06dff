"""Country name → ISO 3166-1 alpha-2 code, for Satellite v1 ``tagged_resolvers.json``.

Satellite v1 tags each resolver with a *full country name* (``"Ireland"``), written by a
MaxMind-style geolocation step; everything later in the pipeline wants the two-letter code.
The table below lists every ISO 3166-1 country under its ISO short name, the short names
MaxMind/CAIDA-style lists use (``"Russia"``, ``"South Korea"``, ``"DR Congo"``, ...), the ISO
"official" comma forms (``"Korea, Republic of"``) and common historical names
(``"Swaziland"``, ``"Burma"``). Kosovo (XK) and MaxMind's legacy pseudo-codes EU/AP and the
withdrawn AN (Netherlands Antilles) are included because old geolocation data uses them.

Lookup is forgiving about spelling details that do not change the meaning: case, accents
(``"Curacao"`` = ``"Curaçao"``), ``&`` vs ``and``, ``St``/``St.`` vs ``Saint``, a leading
``The``, and punctuation (``"Guinea Bissau"`` = ``"Guinea-Bissau"``). A value that already
is a known two-letter code is accepted as is.

Example:
    >>> country_code("DR Congo"), country_code("St Vincent and Grenadines")
    (('CD', True), ('VC', True))
    >>> country_code("Atlantis")
    ('Atlantis', False)
"""

from __future__ import annotations

import functools
import re
import unicodedata

# "CODE|name|variant|..."; the first name is the ISO short name. A code may take several lines.
_TABLE = """
AD|Andorra
AE|United Arab Emirates|UAE
AF|Afghanistan
AG|Antigua and Barbuda
AI|Anguilla
AL|Albania
AM|Armenia
AN|Netherlands Antilles
AO|Angola
AP|Asia/Pacific Region
AQ|Antarctica
AR|Argentina
AS|American Samoa
AT|Austria
AU|Australia
AW|Aruba
AX|Åland Islands|Åland|Aland
AZ|Azerbaijan
BA|Bosnia and Herzegovina|Bosnia-Herzegovina|Bosnia
BB|Barbados
BD|Bangladesh
BE|Belgium
BF|Burkina Faso
BG|Bulgaria
BH|Bahrain
BI|Burundi
BJ|Benin
BL|Saint Barthélemy|Saint Barths
BM|Bermuda
BN|Brunei Darussalam|Brunei
BO|Bolivia|Bolivia, Plurinational State of|Plurinational State of Bolivia
BQ|Bonaire, Sint Eustatius and Saba|Bonaire, Sint Eustatius, and Saba|Caribbean Netherlands|Bonaire
BR|Brazil
BS|Bahamas
BT|Bhutan
BV|Bouvet Island
BW|Botswana
BY|Belarus
BZ|Belize
CA|Canada
CC|Cocos (Keeling) Islands|Cocos Islands|Keeling Islands
CD|DR Congo|Democratic Republic of the Congo|Congo, The Democratic Republic of the
CD|Congo, Democratic Republic of the|Congo (Kinshasa)|Congo-Kinshasa|DRC|Zaire
CF|Central African Republic
CG|Congo|Republic of the Congo|Republic of Congo|Congo Republic
CG|Congo (Brazzaville)|Congo-Brazzaville
CH|Switzerland
CI|Côte d'Ivoire|Ivory Coast
CK|Cook Islands
CL|Chile
CM|Cameroon
CN|China|People's Republic of China
CO|Colombia
CR|Costa Rica
CU|Cuba
CV|Cabo Verde|Cape Verde
CW|Curaçao
CX|Christmas Island
CY|Cyprus
CZ|Czechia|Czech Republic
DE|Germany
DJ|Djibouti
DK|Denmark
DM|Dominica
DO|Dominican Republic
DZ|Algeria
EC|Ecuador
EE|Estonia
EG|Egypt
EH|Western Sahara
ER|Eritrea
ES|Spain
ET|Ethiopia
EU|European Union|Europe
FI|Finland
FJ|Fiji
FK|Falkland Islands|Falkland Islands (Malvinas)|Malvinas
FM|Micronesia|Federated States of Micronesia|Micronesia, Federated States of
FO|Faroe Islands|Faeroe Islands
FR|France
GA|Gabon
GB|United Kingdom|United Kingdom of Great Britain and Northern Ireland|UK|Great Britain|Britain
GD|Grenada
GE|Georgia
GF|French Guiana
GG|Guernsey
GH|Ghana
GI|Gibraltar
GL|Greenland
GM|Gambia
GN|Guinea
GP|Guadeloupe
GQ|Equatorial Guinea
GR|Greece
GS|South Georgia and the South Sandwich Islands|South Georgia and South Sandwich Islands
GT|Guatemala
GU|Guam
GW|Guinea-Bissau
GY|Guyana
HK|Hong Kong|Hong Kong SAR
HM|Heard Island and McDonald Islands|Heard and McDonald Islands
HN|Honduras
HR|Croatia
HT|Haiti
HU|Hungary
ID|Indonesia
IE|Ireland|Republic of Ireland
IL|Israel
IM|Isle of Man
IN|India
IO|British Indian Ocean Territory
IQ|Iraq
IR|Iran|Iran, Islamic Republic of|Islamic Republic of Iran
IS|Iceland
IT|Italy
JE|Jersey
JM|Jamaica
JO|Jordan|Hashemite Kingdom of Jordan
JP|Japan
KE|Kenya
KG|Kyrgyzstan|Kyrgyz Republic
KH|Cambodia
KI|Kiribati
KM|Comoros
KN|Saint Kitts and Nevis
KP|North Korea|Korea, Democratic People's Republic of|Democratic People's Republic of Korea|DPRK
KR|South Korea|Korea, Republic of|Republic of Korea|Korea
KW|Kuwait
KY|Cayman Islands
KZ|Kazakhstan
LA|Laos|Lao People's Democratic Republic|Lao PDR
LB|Lebanon
LC|Saint Lucia
LI|Liechtenstein
LK|Sri Lanka
LR|Liberia
LS|Lesotho
LT|Lithuania|Republic of Lithuania
LU|Luxembourg
LV|Latvia
LY|Libya|Libyan Arab Jamahiriya
MA|Morocco
MC|Monaco
MD|Moldova|Moldova, Republic of|Republic of Moldova
ME|Montenegro
MF|Saint Martin|Saint Martin (French part)
MG|Madagascar
MH|Marshall Islands
MK|North Macedonia|Republic of North Macedonia|Macedonia|FYROM
MK|Macedonia, the Former Yugoslav Republic of
ML|Mali
MM|Myanmar|Burma|Myanmar (Burma)
MN|Mongolia
MO|Macao|Macau|Macao SAR
MP|Northern Mariana Islands
MQ|Martinique
MR|Mauritania
MS|Montserrat
MT|Malta
MU|Mauritius
MV|Maldives
MW|Malawi
MX|Mexico
MY|Malaysia
MZ|Mozambique
NA|Namibia
NC|New Caledonia
NE|Niger
NF|Norfolk Island
NG|Nigeria
NI|Nicaragua
NL|Netherlands|Holland
NO|Norway
NP|Nepal
NR|Nauru
NU|Niue
NZ|New Zealand
OM|Oman
PA|Panama
PE|Peru
PF|French Polynesia
PG|Papua New Guinea
PH|Philippines
PK|Pakistan
PL|Poland
PM|Saint Pierre and Miquelon
PN|Pitcairn|Pitcairn Islands
PR|Puerto Rico
PS|Palestine|Palestine, State of|State of Palestine
PS|Palestinian Territory|Palestinian Territories|Palestinian Territory, Occupied
PT|Portugal
PW|Palau
PY|Paraguay
QA|Qatar
RE|Réunion
RO|Romania
RS|Serbia
RU|Russia|Russian Federation
RW|Rwanda
SA|Saudi Arabia
SB|Solomon Islands
SC|Seychelles
SD|Sudan
SE|Sweden
SG|Singapore
SH|Saint Helena|Saint Helena, Ascension and Tristan da Cunha
SI|Slovenia
SJ|Svalbard and Jan Mayen|Svalbard
SK|Slovakia|Slovak Republic
SL|Sierra Leone
SM|San Marino
SN|Senegal
SO|Somalia
SR|Suriname
SS|South Sudan
ST|São Tomé and Príncipe
SV|El Salvador
SX|Sint Maarten|Sint Maarten (Dutch part)
SY|Syria|Syrian Arab Republic
SZ|Eswatini|Swaziland
TC|Turks and Caicos Islands|Turks and Caicos
TD|Chad
TF|French Southern Territories|French Southern and Antarctic Lands
TG|Togo
TH|Thailand
TJ|Tajikistan
TK|Tokelau
TL|Timor-Leste|East Timor
TM|Turkmenistan
TN|Tunisia
TO|Tonga
TR|Turkey|Türkiye
TT|Trinidad and Tobago
TV|Tuvalu
TW|Taiwan|Taiwan, Province of China
TZ|Tanzania|Tanzania, United Republic of|United Republic of Tanzania
UA|Ukraine
UG|Uganda
UM|United States Minor Outlying Islands|U.S. Outlying Islands|US Minor Outlying Islands
US|United States|United States of America|USA|U.S.
UY|Uruguay
UZ|Uzbekistan
VA|Holy See|Vatican City|Vatican|Holy See (Vatican City State)
VC|Saint Vincent and the Grenadines|Saint Vincent and Grenadines
VE|Venezuela|Venezuela, Bolivarian Republic of
VG|British Virgin Islands|Virgin Islands, British
VI|U.S. Virgin Islands|Virgin Islands, U.S.|United States Virgin Islands
VN|Vietnam|Viet Nam
VU|Vanuatu
WF|Wallis and Futuna
WS|Samoa
XK|Kosovo
YE|Yemen
YT|Mayotte
ZA|South Africa
ZM|Zambia
ZW|Zimbabwe
"""

_DROP = re.compile(r"[.'’`]")
_SPACE = re.compile(r"[\s,()\-/]+")


def _key(name: str) -> str:
    """Normalise a country name for lookup (case, accents, punctuation, Saint/St, The)."""
    decomposed = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    text = _DROP.sub("", text.replace("&", " and "))
    words = [w for w in _SPACE.split(text) if w]
    words = ["saint" if w in ("st", "ste") else w for w in words]
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return " ".join(words)


def _build() -> tuple[dict[str, str], frozenset[str]]:
    by_key: dict[str, str] = {}
    codes: set[str] = set()
    for line in _TABLE.strip().splitlines():
        code, *names = line.split("|")
        codes.add(code)
        for name in names:
            key = _key(name)
            if by_key.setdefault(key, code) != code:  # pragma: no cover - table sanity
                raise ValueError(f"country name {name!r} maps to {by_key[key]} and {code}")
    return by_key, frozenset(codes)


COUNTRY_CODES_BY_NAME, COUNTRY_CODES = _build()


@functools.lru_cache(maxsize=1024)
def country_code(name: str) -> tuple[str, bool]:
    """``(ISO-2 code, True)`` for a known country name; ``(name unchanged, False)`` if not.

    >>> country_code("Ireland"), country_code("the bahamas"), country_code("IE")
    (('IE', True), ('BS', True), ('IE', True))
    """
    stripped = name.strip()
    if len(stripped) == 2 and stripped.isupper() and stripped in COUNTRY_CODES:
        return stripped, True
    code = COUNTRY_CODES_BY_NAME.get(_key(stripped))
    if code is None:
        return name, False
    return code, True
