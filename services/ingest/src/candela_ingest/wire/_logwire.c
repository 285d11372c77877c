/* candela_ingest.wire._logwire: the log wire format read in C, into the writers' columns and out of ingest's requests.

The writers store every log as a row of the ClickHouse `requests` table. Parsing each message with the
protobuf runtime and reading its fields back one by one makes a Python object per field read (about
0.13 us each, some 15 us per log in all); this reads the wire format once, in C, and makes only the
objects the columns hold. It is an accelerator, not a second definition: candela_ingest.writer.rows builds the
same columns from parsed messages, candela_ingest.wire._logwire_py is this module's pure-Python twin (the
reference, selected by CANDELA_NO_EXTENSIONS=1), and the tests and a fuzzer (tests/fuzz) compare them.

A message this decoder does not take on (a later update, a string that is not UTF-8, a field it does not
know in any of its messages, a malformed or unusual encoding) is returned as "fallback": the caller parses
it with the protobuf runtime, which decides whether it is a log, an update or a dead letter, exactly as for
any other message. Nothing is skipped: every field of every message read is either taken or a fallback.

columns(values) -> (columns, set_but_empty, fallback)
    values: a list of bytes, each a serialized LogMessage.
    columns: one list per name of COLUMNS, a value per decoded message, in the order of values.
    set_but_empty: positions (among the decoded messages) of those with a cost or a body reference set to
        its empty value, which only presence tells from unset.
    fallback: positions (in values) of the messages left to the caller.

Ingest reads its requests with the same parsers: checking a batch field by field through the protobuf
runtime and serializing each record again cost ~8 us per log, a quarter of what ingest spent on one.

ingest_request(data, max_records, max_record_bytes, max_metadata_bytes, earliest_seconds, latest_seconds)
        -> (records, keys, organization_ids, request_bodies, response_bodies, trace_contexts) | None
    data: a serialized IngestRequest.
    The parts of each record, in order: its LogMessage record field (tag, length, the LogRecord as
    received), its request id as bytes, its organization id, its two bodies, its trace context (a dict, or
    None when empty); None unless every record surely passes candela_ingest.wire.validation's checks with its
    identifiers in canonical (lower-case) form. None is "not sure", never "invalid": the caller then parses
    the request and checks it exactly.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_tags.h" /* the field numbers, generated from tags.py */

/* The output columns, in the order of COLUMNS (exported to Python). */
enum {
    K_ORGANIZATION_ID, K_REQUEST_ID, K_CREATED_AT, K_CREATED_AT_US, K_NANOS,
    K_API_KEY_ID, K_PROVIDER, K_MODEL, K_RESPONSE_MODEL, K_PATH, K_STATUS_CODE, K_ERROR,
    K_STREAMED, K_LATENCY_MS, K_TIME_TO_FIRST_TOKEN_MS, K_FIRST_TOKEN_AS_SET,
    K_PROMPT_TOKENS, K_COMPLETION_TOKENS, K_TOTAL_TOKENS, K_CACHE_READ_TOKENS, K_CACHE_WRITE_TOKENS,
    K_REASONING_TOKENS, K_AUDIO_PROMPT_TOKENS, K_AUDIO_COMPLETION_TOKENS,
    K_COST_USD, K_COST_SAVED_USD,
    K_USER_ID, K_SESSION_ID, K_SESSION_PATH, K_SESSION_NAME,
    K_PROPERTY_KEYS, K_PROPERTY_VALUES,
    K_PROMPT_ID, K_PROMPT_VERSION, K_CACHE_HIT, K_FINISH_REASON,
    K_REQUEST_BODY_OMITTED, K_RESPONSE_BODY_OMITTED,
    K_REQUEST_BODY_KEY, K_REQUEST_BODY_OFFSET, K_REQUEST_BODY_LENGTH,
    K_REQUEST_BODY_FRAME_OFFSET, K_REQUEST_BODY_FRAME_LENGTH,
    K_RESPONSE_BODY_KEY, K_RESPONSE_BODY_OFFSET, K_RESPONSE_BODY_LENGTH,
    K_RESPONSE_BODY_FRAME_OFFSET, K_RESPONSE_BODY_FRAME_LENGTH,
    K_TARGET_URL,
    K_ATTEMPT_TARGET_URLS, K_ATTEMPT_STATUS_CODES, K_ATTEMPT_ERRORS, K_ATTEMPT_LATENCIES_MS,
    K_PROMPT_INPUT_KEYS, K_PROMPT_INPUT_VALUES,
    K_USAGE_CLAMPED, K_REQUEST_BODY_OVER_LIMIT, K_RESPONSE_BODY_OVER_LIMIT,
    K_TRACE_ID,
    K_COUNT
};

static const char *const COLUMN_NAMES[K_COUNT] = {
    "organization_id", "request_id", "created_at", "created_at_us", "created_at_nanos",
    "api_key_id", "provider", "model", "response_model", "path", "status_code", "error",
    "streamed", "latency_ms", "time_to_first_token_ms", "time_to_first_token_ms_as_set",
    "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "audio_prompt_tokens", "audio_completion_tokens",
    "cost_usd_text", "cost_saved_usd_text",
    "user_id", "session_id", "session_path", "session_name",
    "property_keys", "property_values",
    "prompt_id", "prompt_version", "cache_hit", "finish_reason",
    "request_body_omitted", "response_body_omitted",
    "request_body_key", "request_body_offset", "request_body_length",
    "request_body_frame_offset", "request_body_frame_length",
    "response_body_key", "response_body_offset", "response_body_length",
    "response_body_frame_offset", "response_body_frame_length",
    "target_url",
    "attempt_target_urls", "attempt_status_codes", "attempt_errors", "attempt_latencies_ms",
    "prompt_input_keys", "prompt_input_values",
    "usage_clamped", "request_body_over_limit", "response_body_over_limit",
    "trace_id",
};

typedef struct {
    const char *data;
    Py_ssize_t size;
} Slice;

typedef struct {
    Slice key;
    Slice value;
} Pair;

typedef struct {
    Slice target_url;
    int64_t status_code;
    Slice error;
    int64_t latency_ms;
} Attempt;

/* Growable arrays, reused from message to message. */
typedef struct {
    Pair *items;
    Py_ssize_t count, capacity;
} Pairs;

typedef struct {
    Attempt *items;
    Py_ssize_t count, capacity;
} Attempts;

/* One message as read: string fields as slices of the input, numbers as they are. */
typedef struct {
    Slice text[K_COUNT];
    int64_t number[K_COUNT];
    int has_first_token, has_cost, has_cost_saved, has_request_body, has_response_body;
    Pairs properties, prompt_inputs;
    Attempts attempts;
} Row;

typedef enum { OK = 0, FALLBACK = 1 } Outcome;

#define WIRE_VARINT 0
#define WIRE_FIXED64 1
#define WIRE_LEN 2
#define WIRE_FIXED32 5

static int read_varint(const uint8_t **at, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    const uint8_t *p = *at;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end) return -1;
        uint8_t byte = *p++;
        if (shift == 63 && byte > 1) return -1; /* beyond 64 bits: left to the runtime */
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *at = p;
            *out = value;
            return 0;
        }
    }
    return -1; /* more than 10 bytes */
}

/* A tag or a length: a varint of at most 5 bytes, as the protobuf runtime reads them (it refuses a longer
   encoding, even of a small number, as corrupt); -1 otherwise. */
static int read_short_varint(const uint8_t **at, const uint8_t *end, uint64_t *out) {
    const uint8_t *start = *at;
    if (start < end && *start < 0x80) { /* most tags and lengths: one byte */
        *out = *start;
        *at = start + 1;
        return 0;
    }
    if (read_varint(at, end, out) < 0) return -1;
    if (*at - start > 5) {
        *at = start;
        return -1;
    }
    return 0;
}

/* Reads a tag and, for a length-delimited field, its bounds; -1 when malformed. */
typedef struct {
    uint32_t number;
    int wire;
    uint64_t varint;   /* WIRE_VARINT */
    const uint8_t *start; /* WIRE_LEN */
    Py_ssize_t size;
} Field;

static int read_field(const uint8_t **at, const uint8_t *end, Field *field) {
    uint64_t tag;
    if (read_short_varint(at, end, &tag) < 0 || tag >> 3 == 0 || tag >> 3 > 0x1FFFFFFF) return -1;
    field->number = (uint32_t)(tag >> 3);
    field->wire = (int)(tag & 7);
    switch (field->wire) {
    case WIRE_VARINT:
        return read_varint(at, end, &field->varint);
    case WIRE_FIXED64:
        if (end - *at < 8) return -1;
        *at += 8;
        return 0;
    case WIRE_FIXED32:
        if (end - *at < 4) return -1;
        *at += 4;
        return 0;
    case WIRE_LEN: {
        uint64_t size;
        if (read_short_varint(at, end, &size) < 0 || size > (uint64_t)(end - *at)) return -1;
        field->start = *at;
        field->size = (Py_ssize_t)size;
        *at += size;
        return 0;
    }
    default:
        return -1; /* groups: left to the protobuf runtime */
    }
}

static Slice slice_of(const Field *field) {
    Slice slice = {(const char *)field->start, field->size};
    return slice;
}

/* Whether a string field's bytes are UTF-8, as the protobuf runtime requires of every occurrence of a
   string field (a later occurrence replacing an invalid one does not make the message valid): no overlong
   forms, no surrogates, nothing beyond U+10FFFF. */
static int is_utf8(const uint8_t *p, Py_ssize_t size) {
    const uint8_t *end = p + size;
    while (p < end) {
        uint8_t lead = *p;
        if (lead < 0x80) {
            p++;
            continue;
        }
        int more;
        uint32_t point;
        if (lead >= 0xC2 && lead <= 0xDF) {
            more = 1;
            point = lead & 0x1F;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            more = 2;
            point = lead & 0x0F;
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            more = 3;
            point = lead & 0x07;
        } else {
            return 0;
        }
        if (end - p <= more) return 0;
        for (int i = 1; i <= more; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            point = point << 6 | (p[i] & 0x3F);
        }
        if (more == 2 && (point < 0x800 || (point >= 0xD800 && point <= 0xDFFF))) return 0;
        if (more == 3 && (point < 0x10000 || point > 0x10FFFF)) return 0;
        p += more + 1;
    }
    return 1;
}

/* Each of these parses one (sub)message into the row; a message met again merges into what was read, as
   the protobuf runtime merges it. A known field with an unexpected wire type is left to the runtime. */

#define EXPECT(wire_type) \
    if (field.wire != (wire_type)) return FALLBACK

/* A string field: length-delimited and UTF-8. */
#define EXPECT_TEXT()                                                   \
    if (field.wire != WIRE_LEN || !is_utf8(field.start, field.size)) return FALLBACK

/* A Timestamp into its seconds and nanos (row NULL: read, checked and dropped, as ingested_at is). */
static Outcome parse_timestamp(const uint8_t *p, const uint8_t *end, Row *row) {
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        if (field.number == TIMESTAMP_SECONDS) {
            EXPECT(WIRE_VARINT);
            if (row != NULL) row->number[K_CREATED_AT] = (int64_t)field.varint;
        } else if (field.number == TIMESTAMP_NANOS) {
            EXPECT(WIRE_VARINT);
            if (row != NULL) row->number[K_NANOS] = (int32_t)field.varint;
        } else {
            return FALLBACK; /* a field this decoder does not know: the runtime's to read */
        }
    }
    return OK;
}

static Outcome parse_usage(const uint8_t *p, const uint8_t *end, Row *row) {
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        if (field.number >= TOKEN_USAGE_PROMPT_TOKENS && field.number <= TOKEN_USAGE_AUDIO_COMPLETION_TOKENS) {
            EXPECT(WIRE_VARINT);
            row->number[K_PROMPT_TOKENS + field.number - TOKEN_USAGE_PROMPT_TOKENS] = (int64_t)field.varint;
        } else {
            return FALLBACK;
        }
    }
    return OK;
}

/* Doubles a growable array's capacity (8 at first); -1 when out of memory. */
static int grow(void **items, Py_ssize_t *capacity, size_t item_size) {
    Py_ssize_t larger = *capacity ? *capacity * 2 : 8;
    void *grown = PyMem_Realloc(*items, (size_t)larger * item_size);
    if (grown == NULL) return -1;
    *items = grown;
    *capacity = larger;
    return 0;
}

/* Room for one more item in a growable array (Pairs, Attempts); -1 when out of memory. */
#define RESERVE(array)                                                                                \
    ((array)->count < (array)->capacity ? 0                                                           \
                                        : grow((void **)&(array)->items, &(array)->capacity, sizeof(*(array)->items)))

static Outcome parse_pair(const uint8_t *p, const uint8_t *end, Pairs *pairs) {
    if (RESERVE(pairs) < 0) return FALLBACK;
    Pair *pair = &pairs->items[pairs->count];
    pair->key.data = pair->value.data = "";
    pair->key.size = pair->value.size = 0;
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        if (field.number == MAP_ENTRY_KEY) {
            EXPECT_TEXT();
            pair->key = slice_of(&field);
        } else if (field.number == MAP_ENTRY_VALUE) {
            EXPECT_TEXT();
            pair->value = slice_of(&field);
        } else {
            return FALLBACK; /* the runtime keeps such an entry aside, out of the map */
        }
    }
    pairs->count++;
    return OK;
}

static Outcome parse_attempt(const uint8_t *p, const uint8_t *end, Attempts *attempts) {
    if (RESERVE(attempts) < 0) return FALLBACK;
    Attempt *attempt = &attempts->items[attempts->count];
    memset(attempt, 0, sizeof(*attempt));
    attempt->target_url.data = attempt->error.data = "";
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        switch (field.number) {
        case UPSTREAM_ATTEMPT_TARGET_URL: EXPECT_TEXT(); attempt->target_url = slice_of(&field); break;
        case UPSTREAM_ATTEMPT_STATUS_CODE: EXPECT(WIRE_VARINT); attempt->status_code = (int32_t)field.varint; break;
        case UPSTREAM_ATTEMPT_ERROR: EXPECT_TEXT(); attempt->error = slice_of(&field); break;
        case UPSTREAM_ATTEMPT_LATENCY_MS: EXPECT(WIRE_VARINT); attempt->latency_ms = (int64_t)field.varint; break;
        default: return FALLBACK;
        }
    }
    attempts->count++;
    return OK;
}

/* BodyRef: its five fields are consecutive columns from `first` (the key) on. */
static Outcome parse_body(const uint8_t *p, const uint8_t *end, Row *row, int first) {
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        if (field.number == BODY_REF_OBJECT_KEY) {
            EXPECT_TEXT();
            row->text[first] = slice_of(&field);
        } else if (field.number >= BODY_REF_OFFSET && field.number <= BODY_REF_FRAME_LENGTH) {
            EXPECT(WIRE_VARINT);
            row->number[first + field.number - BODY_REF_OBJECT_KEY] = (int64_t)field.varint;
        } else {
            return FALLBACK;
        }
    }
    return OK;
}

/* LogRecord's string fields and where they go, as column + 1 (0: not a string field). */
#define TO(column) ((column) + 1)
#define RECORD_FIELDS (LOG_RECORD_TRACE_ID + 1)
static const int RECORD_STRINGS[RECORD_FIELDS] = {
    [LOG_RECORD_REQUEST_ID] = TO(K_REQUEST_ID), [LOG_RECORD_ORGANIZATION_ID] = TO(K_ORGANIZATION_ID),
    [LOG_RECORD_API_KEY_ID] = TO(K_API_KEY_ID), [LOG_RECORD_PROVIDER] = TO(K_PROVIDER),
    [LOG_RECORD_MODEL] = TO(K_MODEL), [LOG_RECORD_RESPONSE_MODEL] = TO(K_RESPONSE_MODEL),
    [LOG_RECORD_PATH] = TO(K_PATH), [LOG_RECORD_ERROR] = TO(K_ERROR), [LOG_RECORD_COST_USD] = TO(K_COST_USD),
    [LOG_RECORD_USER_ID] = TO(K_USER_ID), [LOG_RECORD_SESSION_ID] = TO(K_SESSION_ID),
    [LOG_RECORD_SESSION_PATH] = TO(K_SESSION_PATH), [LOG_RECORD_SESSION_NAME] = TO(K_SESSION_NAME),
    [LOG_RECORD_PROMPT_ID] = TO(K_PROMPT_ID), [LOG_RECORD_PROMPT_VERSION] = TO(K_PROMPT_VERSION),
    [LOG_RECORD_FINISH_REASON] = TO(K_FINISH_REASON), [LOG_RECORD_TARGET_URL] = TO(K_TARGET_URL),
    [LOG_RECORD_COST_SAVED_USD] = TO(K_COST_SAVED_USD), [LOG_RECORD_TRACE_ID] = TO(K_TRACE_ID),
};
/* LogRecord's integer and bool fields, likewise (bools are read as 0/1 at output). */
static const int RECORD_NUMBERS[RECORD_FIELDS] = {
    [LOG_RECORD_STATUS_CODE] = TO(K_STATUS_CODE), [LOG_RECORD_STREAMED] = TO(K_STREAMED),
    [LOG_RECORD_LATENCY_MS] = TO(K_LATENCY_MS), [LOG_RECORD_TIME_TO_FIRST_TOKEN_MS] = TO(K_TIME_TO_FIRST_TOKEN_MS),
    [LOG_RECORD_CACHE_HIT] = TO(K_CACHE_HIT), [LOG_RECORD_REQUEST_BODY_OMITTED] = TO(K_REQUEST_BODY_OMITTED),
    [LOG_RECORD_RESPONSE_BODY_OMITTED] = TO(K_RESPONSE_BODY_OMITTED), [LOG_RECORD_USAGE_CLAMPED] = TO(K_USAGE_CLAMPED),
    [LOG_RECORD_REQUEST_BODY_OVER_LIMIT] = TO(K_REQUEST_BODY_OVER_LIMIT),
    [LOG_RECORD_RESPONSE_BODY_OVER_LIMIT] = TO(K_RESPONSE_BODY_OVER_LIMIT),
};

static Outcome parse_record(const uint8_t *p, const uint8_t *end, Row *row) {
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        uint32_t number = field.number;
        if (number < RECORD_FIELDS && RECORD_STRINGS[number]) {
            EXPECT_TEXT();
            row->text[RECORD_STRINGS[number] - 1] = slice_of(&field);
            if (number == LOG_RECORD_COST_USD) row->has_cost = 1;
            if (number == LOG_RECORD_COST_SAVED_USD) row->has_cost_saved = 1;
        } else if (number < RECORD_FIELDS && RECORD_NUMBERS[number]) {
            EXPECT(WIRE_VARINT);
            int column = RECORD_NUMBERS[number] - 1;
            row->number[column] =
                number == LOG_RECORD_STATUS_CODE ? (int64_t)(int32_t)field.varint : (int64_t)field.varint;
            if (number == LOG_RECORD_TIME_TO_FIRST_TOKEN_MS) row->has_first_token = 1;
        } else if (number == LOG_RECORD_CREATED_AT || number == LOG_RECORD_USAGE || number == LOG_RECORD_PROPERTIES ||
                   number == LOG_RECORD_ATTEMPTS || number == LOG_RECORD_PROMPT_INPUTS) {
            EXPECT(WIRE_LEN);
            const uint8_t *start = field.start, *stop = field.start + field.size;
            Outcome outcome = number == LOG_RECORD_CREATED_AT ? parse_timestamp(start, stop, row)
                              : number == LOG_RECORD_USAGE    ? parse_usage(start, stop, row)
                              : number == LOG_RECORD_PROPERTIES ? parse_pair(start, stop, &row->properties)
                              : number == LOG_RECORD_ATTEMPTS   ? parse_attempt(start, stop, &row->attempts)
                                                                : parse_pair(start, stop, &row->prompt_inputs);
            if (outcome != OK) return outcome;
        } else {
            return FALLBACK; /* a field this decoder does not know (a newer LogRecord): the runtime's to read */
        }
    }
    return OK;
}

static Outcome parse_message(const uint8_t *p, const uint8_t *end, Row *row) {
    Field field;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return FALLBACK;
        /* A later update, or a field this decoder does not know (a newer LogMessage): the caller's to read. */
        if (field.number < LOG_MESSAGE_RECORD || field.number > LOG_MESSAGE_INGESTED_AT) return FALLBACK;
        EXPECT(WIRE_LEN);
        const uint8_t *start = field.start, *stop = field.start + field.size;
        Outcome outcome;
        if (field.number == LOG_MESSAGE_RECORD) {
            outcome = parse_record(start, stop, row);
        } else if (field.number == LOG_MESSAGE_REQUEST_BODY) {
            row->has_request_body = 1;
            outcome = parse_body(start, stop, row, K_REQUEST_BODY_KEY);
        } else if (field.number == LOG_MESSAGE_RESPONSE_BODY) {
            row->has_response_body = 1;
            outcome = parse_body(start, stop, row, K_RESPONSE_BODY_KEY);
        } else {
            outcome = parse_timestamp(start, stop, NULL); /* ingested_at: not a column */
        }
        if (outcome != OK) return outcome;
    }
    return OK;
}

/* Building the Python values of a row. NULL with no exception set means "fallback" (not UTF-8);
   NULL with an exception set is an error. */

/* The last text made for each column: consecutive logs repeat most of their texts (provider, model, path,
   user), and a repeat shares the object. */
typedef struct {
    Slice slice;
    PyObject *text;
} Cached;

static PyObject *text_of(Slice slice, Cached *cached) {
    if (cached != NULL && cached->text != NULL && cached->slice.size == slice.size &&
        memcmp(cached->slice.data, slice.data, (size_t)slice.size) == 0) {
        Py_INCREF(cached->text);
        return cached->text;
    }
    PyObject *text = PyUnicode_DecodeUTF8(slice.data, slice.size, NULL);
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
        return NULL;
    }
    if (cached != NULL) {
        Py_XSETREF(cached->text, Py_NewRef(text));
        cached->slice = slice;
    }
    return text;
}

/* Map entries as a dict; a repeated key keeps its last value, as in a protobuf map. */
static PyObject *pairs_dict(const Pairs *pairs) {
    PyObject *map = PyDict_New();
    if (map == NULL) return NULL;
    for (Py_ssize_t i = 0; i < pairs->count; i++) {
        PyObject *key = text_of(pairs->items[i].key, NULL);
        PyObject *value = key == NULL ? NULL : text_of(pairs->items[i].value, NULL);
        int set = value == NULL ? -1 : PyDict_SetItem(map, key, value);
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (set < 0) {
            Py_DECREF(map);
            return NULL;
        }
    }
    return map;
}

/* Map entries as two lists, the keys sorted and the values in their order (see pairs_dict). */
static int map_lists(const Pairs *pairs, PyObject **keys_out, PyObject **values_out) {
    *keys_out = *values_out = NULL;
    PyObject *map = pairs_dict(pairs);
    if (map == NULL) return -1;
    PyObject *keys = PyDict_Keys(map);
    if (keys == NULL || PyList_Sort(keys) < 0) {
        Py_XDECREF(keys);
        Py_DECREF(map);
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(keys);
    PyObject *values = PyList_New(count);
    if (values == NULL) {
        Py_DECREF(keys);
        Py_DECREF(map);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        PyList_SET_ITEM(values, i, Py_NewRef(PyDict_GetItem(map, PyList_GET_ITEM(keys, i))));
    Py_DECREF(map);
    *keys_out = keys;
    *values_out = values;
    return 0;
}

static int is_text_column(int column) {
    switch (column) {
    case K_ORGANIZATION_ID: case K_REQUEST_ID: case K_API_KEY_ID: case K_PROVIDER: case K_MODEL:
    case K_RESPONSE_MODEL: case K_PATH: case K_ERROR: case K_COST_USD: case K_COST_SAVED_USD:
    case K_USER_ID: case K_SESSION_ID: case K_SESSION_PATH: case K_SESSION_NAME: case K_PROMPT_ID:
    case K_PROMPT_VERSION: case K_FINISH_REASON: case K_REQUEST_BODY_KEY: case K_RESPONSE_BODY_KEY:
    case K_TARGET_URL: case K_TRACE_ID:
        return 1;
    default:
        return 0;
    }
}

static int is_list_column(int column) {
    return column == K_PROPERTY_KEYS || column == K_PROPERTY_VALUES || column == K_PROMPT_INPUT_KEYS ||
           column == K_PROMPT_INPUT_VALUES || (column >= K_ATTEMPT_TARGET_URLS && column <= K_ATTEMPT_LATENCIES_MS);
}

static int is_flag_column(int column) {
    return column == K_STREAMED || column == K_CACHE_HIT || column == K_REQUEST_BODY_OMITTED ||
           column == K_RESPONSE_BODY_OMITTED || column == K_USAGE_CLAMPED || column == K_REQUEST_BODY_OVER_LIMIT ||
           column == K_RESPONSE_BODY_OVER_LIMIT;
}

/* Python's floor division, for a (possibly negative) number of nanoseconds. */
static int64_t floor_div(int64_t value, int64_t by) {
    int64_t quotient = value / by;
    return (value % by != 0 && value < 0) ? quotient - 1 : quotient;
}

/* The attempts as four lists (URLs, status codes, errors, latencies). */
static int attempt_lists(const Attempts *attempts, Cached *cache, PyObject **lists) {
    for (int i = 0; i < 4; i++) {
        lists[i] = PyList_New(attempts->count);
        if (lists[i] == NULL) return -1;
    }
    for (Py_ssize_t i = 0; i < attempts->count; i++) {
        const Attempt *attempt = &attempts->items[i];
        PyObject *url = text_of(attempt->target_url, &cache[K_TARGET_URL]);
        PyObject *error = url == NULL ? NULL : text_of(attempt->error, &cache[K_ERROR]);
        PyObject *code = error == NULL ? NULL : PyLong_FromLongLong(attempt->status_code);
        PyObject *latency = code == NULL ? NULL : PyLong_FromLongLong(attempt->latency_ms);
        if (latency == NULL) {
            Py_XDECREF(url);
            Py_XDECREF(error);
            Py_XDECREF(code);
            return -1;
        }
        PyList_SET_ITEM(lists[0], i, url);
        PyList_SET_ITEM(lists[1], i, code);
        PyList_SET_ITEM(lists[2], i, error);
        PyList_SET_ITEM(lists[3], i, latency);
    }
    return 0;
}

/* seconds * 1,000,000 + micros in Python's integers. */
static PyObject *wide_micros(int64_t seconds, int64_t micros) {
    PyObject *result = NULL, *big = PyLong_FromLongLong(seconds), *million = PyLong_FromLong(1000000),
             *small = PyLong_FromLongLong(micros), *product = NULL;
    if (big != NULL && million != NULL && small != NULL) product = PyNumber_Multiply(big, million);
    if (product != NULL) result = PyNumber_Add(product, small);
    Py_XDECREF(big);
    Py_XDECREF(million);
    Py_XDECREF(small);
    Py_XDECREF(product);
    return result;
}

/* The row's values, one per column; -1 (values cleared) when one cannot be made. */
static int row_values(Row *row, Cached *cache, PyObject **values) {
    memset(values, 0, K_COUNT * sizeof(PyObject *));
    int64_t seconds = row->number[K_CREATED_AT], micros = floor_div(row->number[K_NANOS], 1000);
    /* Beyond 64 bits (no valid log comes near), created_at_us is made as Python's exact integers make it. */
    int wide = seconds > INT64_C(9000000000000) || seconds < -INT64_C(9000000000000);
    if (!wide) row->number[K_CREATED_AT_US] = seconds * 1000000 + micros;
    int64_t first_token = row->number[K_TIME_TO_FIRST_TOKEN_MS];
    row->number[K_FIRST_TOKEN_AS_SET] = first_token;
    if (!row->has_first_token) row->number[K_TIME_TO_FIRST_TOKEN_MS] = -1;
    if (map_lists(&row->properties, &values[K_PROPERTY_KEYS], &values[K_PROPERTY_VALUES]) < 0 ||
        map_lists(&row->prompt_inputs, &values[K_PROMPT_INPUT_KEYS], &values[K_PROMPT_INPUT_VALUES]) < 0 ||
        attempt_lists(&row->attempts, cache, &values[K_ATTEMPT_TARGET_URLS]) < 0)
        goto failed;
    for (int column = 0; column < K_COUNT; column++) {
        if (is_list_column(column)) continue;
        if (is_text_column(column))
            values[column] = text_of(row->text[column], &cache[column]);
        else if (column == K_CREATED_AT_US && wide)
            values[column] = wide_micros(seconds, micros);
        else if (is_flag_column(column))
            values[column] = PyLong_FromLong(row->number[column] != 0);
        else
            values[column] = PyLong_FromLongLong(row->number[column]);
        if (values[column] == NULL) goto failed;
    }
    return 0;
failed:
    for (int column = 0; column < K_COUNT; column++) Py_CLEAR(values[column]);
    return -1;
}

static void reset_row(Row *row) {
    Pairs properties = row->properties, prompt_inputs = row->prompt_inputs;
    Attempts attempts = row->attempts;
    memset(row, 0, sizeof(*row));
    for (int column = 0; column < K_COUNT; column++) row->text[column].data = "";
    properties.count = prompt_inputs.count = attempts.count = 0;
    row->properties = properties;
    row->prompt_inputs = prompt_inputs;
    row->attempts = attempts;
}

static int append_index(PyObject *list, Py_ssize_t index) {
    PyObject *number = PyLong_FromSsize_t(index);
    if (number == NULL) return -1;
    int result = PyList_Append(list, number);
    Py_DECREF(number);
    return result;
}

static PyObject *columns(PyObject *Py_UNUSED(module), PyObject *values) {
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "columns() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(values);
    PyObject *result = NULL, *lists = PyList_New(K_COUNT), *set_but_empty = PyList_New(0),
             *fallback = PyList_New(0);
    Cached cache[K_COUNT];
    memset(cache, 0, sizeof(cache));
    Row row;
    memset(&row, 0, sizeof(row));
    if (lists == NULL || set_but_empty == NULL || fallback == NULL) goto done;
    for (int column = 0; column < K_COUNT; column++) {
        PyObject *list = PyList_New(0);
        if (list == NULL) goto done;
        PyList_SET_ITEM(lists, column, list);
    }
    Py_ssize_t decoded = 0;
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *value = PyList_GET_ITEM(values, index);
        if (!PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "columns() takes a list of bytes");
            goto done;
        }
        const uint8_t *start = (const uint8_t *)PyBytes_AS_STRING(value);
        reset_row(&row);
        PyObject *row_objects[K_COUNT];
        if (parse_message(start, start + PyBytes_GET_SIZE(value), &row) != OK ||
            row_values(&row, cache, row_objects) < 0) {
            if (PyErr_Occurred()) goto done;
            if (append_index(fallback, index) < 0) goto done;
            continue;
        }
        for (int column = 0; column < K_COUNT; column++) {
            int appended = PyList_Append(PyList_GET_ITEM(lists, column), row_objects[column]);
            Py_DECREF(row_objects[column]);
            if (appended < 0) {
                for (int rest = column + 1; rest < K_COUNT; rest++) Py_DECREF(row_objects[rest]);
                goto done;
            }
        }
        int empty = (row.has_cost && row.text[K_COST_USD].size == 0) ||
                    (row.has_cost_saved && row.text[K_COST_SAVED_USD].size == 0) ||
                    (row.has_request_body && row.text[K_REQUEST_BODY_KEY].size == 0) ||
                    (row.has_response_body && row.text[K_RESPONSE_BODY_KEY].size == 0);
        if (empty && append_index(set_but_empty, decoded) < 0) goto done;
        decoded++;
    }
    result = PyTuple_Pack(3, lists, set_but_empty, fallback);
done:
    for (int column = 0; column < K_COUNT; column++) Py_XDECREF(cache[column].text);
    PyMem_Free(row.properties.items);
    PyMem_Free(row.prompt_inputs.items);
    PyMem_Free(row.attempts.items);
    Py_XDECREF(lists);
    Py_XDECREF(set_but_empty);
    Py_XDECREF(fallback);
    return result;
}

/* ---- Ingest: an IngestRequest as received, when every record surely passes ingest's checks ---- */

#define UINT32_LIMIT INT64_C(4294967295)
#define INT32_LIMIT INT64_C(2147483647)
#define NANOS_PER_SECOND 1000000000

/* A UUID in its 36-character hyphenated form, lower case: the canonical form ingest stores. */
static int is_canonical_uuid(Slice text) {
    if (text.size != 36) return 0;
    for (int i = 0; i < 36; i++) {
        char c = text.data[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* A cost any exact check accepts: digits, optionally a point and more digits, below 1,000,000. */
static int is_plain_cost(Slice text) {
    Py_ssize_t at = 0, significant = 0;
    while (at < text.size && text.data[at] == '0') at++;
    if (at == 0 && (text.size == 0 || text.data[0] < '0' || text.data[0] > '9')) return 0;
    for (; at < text.size && text.data[at] >= '0' && text.data[at] <= '9'; at++) significant++;
    if (significant > 6) return 0;
    if (at == text.size) return 1;
    if (text.data[at++] != '.' || at == text.size) return 0;
    for (; at < text.size; at++)
        if (text.data[at] < '0' || text.data[at] > '9') return 0;
    return 1;
}

static int within(int64_t value, int64_t low, int64_t high) { return value >= low && value <= high; }

/* Whether a record or its metadata, `size` bytes on the wire, may be over its size limit. The limits apply to
   the size the protobuf runtime gives a parsed record, which is at most 3x the size on the wire (a map entry
   sent without its key and value grows from 2 bytes to 6): they are applied here with a 4x margin. */
static int over_limit(Py_ssize_t size, int64_t limit) { return (int64_t)size * 4 > limit; }

/* Whether a parsed record passes every check of candela_ingest.wire.validation, with its identifiers already
   canonical. 0 means "not sure", never "invalid": the caller then runs the exact checks. */
static int record_passes(const Row *row, int64_t earliest, int64_t latest, Py_ssize_t request_body,
                         Py_ssize_t response_body) {
    if (!is_canonical_uuid(row->text[K_REQUEST_ID]) || !is_canonical_uuid(row->text[K_ORGANIZATION_ID]) ||
        (row->text[K_API_KEY_ID].size && !is_canonical_uuid(row->text[K_API_KEY_ID])))
        return 0;
    if (!within(row->number[K_CREATED_AT], earliest, latest) ||
        !within(row->number[K_NANOS], 0, NANOS_PER_SECOND - 1) ||
        !within(row->number[K_STATUS_CODE], 0, 999) || !within(row->number[K_LATENCY_MS], 0, UINT32_LIMIT) ||
        !within(row->number[K_TIME_TO_FIRST_TOKEN_MS], 0, INT32_LIMIT))
        return 0;
    for (int column = K_PROMPT_TOKENS; column <= K_AUDIO_COMPLETION_TOKENS; column++)
        if (!within(row->number[column], 0, UINT32_LIMIT)) return 0;
    if ((row->has_cost && !is_plain_cost(row->text[K_COST_USD])) ||
        (row->has_cost_saved && !is_plain_cost(row->text[K_COST_SAVED_USD])))
        return 0;
    return !(row->number[K_REQUEST_BODY_OMITTED] && request_body) &&
           !(row->number[K_RESPONSE_BODY_OMITTED] && response_body);
}

/* LogMessage's record field (tag 1, length, the LogRecord's bytes), as ingest produces it. */
static PyObject *record_field(const Field *record) {
    uint8_t prefix[11];
    Py_ssize_t used = 1;
    prefix[0] = LOG_MESSAGE_RECORD << 3 | WIRE_LEN;
    uint64_t size = (uint64_t)record->size;
    do {
        prefix[used++] = (uint8_t)((size & 0x7F) | (size > 0x7F ? 0x80 : 0));
        size >>= 7;
    } while (size);
    PyObject *field = PyBytes_FromStringAndSize(NULL, used + record->size);
    if (field == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(field), prefix, (size_t)used);
    memcpy(PyBytes_AS_STRING(field) + used, record->start, (size_t)record->size);
    return field;
}

enum { P_RECORDS, P_KEYS, P_ORGANIZATIONS, P_REQUEST_BODIES, P_RESPONSE_BODIES, P_CONTEXTS, P_COUNT };

/* One IngestRecord's parts appended to the lists; 1 when done, 0 when the record needs the exact checks,
   -1 on an error. */
static int take_record(const uint8_t *p, const uint8_t *end, const int64_t *bounds, Row *row, Pairs *context,
                       Cached *organization, PyObject **lists) {
    Field field, record = {0};
    Slice bodies[2] = {{"", 0}, {"", 0}};
    int seen[4] = {0};
    context->count = 0;
    while (p < end) {
        if (read_field(&p, end, &field) < 0) return 0;
        /* A field this reader does not know (a newer IngestRecord) takes the exact path, never a skip. */
        if (field.number < INGEST_RECORD_RECORD || field.number > INGEST_RECORD_TRACE_CONTEXT) return 0;
        if (field.wire != WIRE_LEN) return 0;
        if (field.number == INGEST_RECORD_TRACE_CONTEXT) {
            if (parse_pair(field.start, field.start + field.size, context) != OK) return 0;
            continue;
        }
        if (seen[field.number - INGEST_RECORD_RECORD]++) return 0; /* met twice: the runtime merges or replaces it */
        if (field.number == INGEST_RECORD_RECORD)
            record = field;
        else
            bodies[field.number - INGEST_RECORD_REQUEST_BODY] = slice_of(&field);
    }
    if (!seen[0] || over_limit(record.size, bounds[1])) return 0;
    reset_row(row);
    if (parse_record(record.start, record.start + record.size, row) != OK ||
        !record_passes(row, bounds[2], bounds[3], bodies[0].size, bodies[1].size))
        return 0;
    PyObject *parts[P_COUNT] = {
        record_field(&record),
        PyBytes_FromStringAndSize(row->text[K_REQUEST_ID].data, 36),
        text_of(row->text[K_ORGANIZATION_ID], organization),
        PyBytes_FromStringAndSize(bodies[0].data, bodies[0].size),
        PyBytes_FromStringAndSize(bodies[1].data, bodies[1].size),
        context->count ? pairs_dict(context) : Py_NewRef(Py_None), /* the trace context */
    };
    int result = 1;
    for (int i = 0; i < P_COUNT; i++) {
        if (parts[i] == NULL || (result == 1 && PyList_Append(lists[i], parts[i]) < 0)) result = -1;
        Py_XDECREF(parts[i]);
    }
    return result;
}

static PyObject *ingest_request(PyObject *Py_UNUSED(module), PyObject *args) {
    const uint8_t *p;
    Py_ssize_t size, max_records;
    /* bounds: the most bytes of a record with its bodies, of its metadata; created_at's earliest and latest
       seconds */
    int64_t bounds[4];
    if (!PyArg_ParseTuple(args, "y#nLLLL:ingest_request", &p, &size, &max_records, &bounds[0], &bounds[1],
                          &bounds[2], &bounds[3]))
        return NULL;
    const uint8_t *end = p + size;
    PyObject *result = NULL, *lists[P_COUNT] = {NULL};
    Row row;
    memset(&row, 0, sizeof(row));
    Pairs context = {NULL, 0, 0};
    Cached organization = {{"", 0}, NULL};
    for (int i = 0; i < P_COUNT; i++)
        if ((lists[i] = PyList_New(0)) == NULL) goto done;
    Py_ssize_t count = 0;
    int taken = 1;
    Field field;
    while (p < end && taken == 1) {
        if (read_field(&p, end, &field) < 0) {
            taken = 0;
        } else if (field.number != INGEST_REQUEST_RECORDS) {
            taken = 0; /* a field this reader does not know (a newer IngestRequest): the exact path's */
        } else {
            taken = field.wire == WIRE_LEN && ++count <= max_records && !over_limit(field.size, bounds[0])
                        ? take_record(field.start, field.start + field.size, bounds, &row, &context,
                                      &organization, lists)
                        : 0;
        }
    }
    if (taken < 0) goto done;
    if (taken == 0 || count == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyTuple_New(P_COUNT);
    if (result == NULL) goto done;
    for (int i = 0; i < P_COUNT; i++) PyTuple_SET_ITEM(result, i, Py_NewRef(lists[i]));
done:
    for (int i = 0; i < P_COUNT; i++) Py_XDECREF(lists[i]);
    Py_XDECREF(organization.text);
    PyMem_Free(row.properties.items);
    PyMem_Free(row.prompt_inputs.items);
    PyMem_Free(row.attempts.items);
    PyMem_Free(context.items);
    return result;
}

static PyMethodDef METHODS[] = {
    {"columns", columns, METH_O, "Serialized LogMessages as the writers' columns (see the module docstring)."},
    {"ingest_request", ingest_request, METH_VARARGS,
     "A serialized IngestRequest's parts, when every record surely passes ingest's checks (see the module docstring)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "candela_ingest.wire._logwire",
    "The log wire format read in C: LogMessages into the writers' columns, IngestRequests into ingest's parts.",
    -1, METHODS,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__logwire(void) {
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL) return NULL;
    PyObject *names = PyTuple_New(K_COUNT);
    if (names == NULL) goto failed;
    for (int column = 0; column < K_COUNT; column++) {
        PyObject *name = PyUnicode_FromString(COLUMN_NAMES[column]);
        if (name == NULL) {
            Py_DECREF(names);
            goto failed;
        }
        PyTuple_SET_ITEM(names, column, name);
    }
    if (PyModule_AddObject(module, "COLUMNS", names) < 0) {
        Py_DECREF(names);
        goto failed;
    }
    return module;
failed:
    Py_DECREF(module);
    return NULL;
}
