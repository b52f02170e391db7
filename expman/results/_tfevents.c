/* Fast reader for TensorBoard event files: TFRecord framing with masked CRC32C, and the
 * Event -> Summary -> Value protobuf path for scalars (simple_value, and rank-0 tensors of
 * the 'scalars' plugin). The pure-Python reader in tfevents.py implements the same rules;
 * tests hold the two to identical output.
 *
 * parse(buffer, check_crc) -> (tags, counts, steps, wall_times, values, monotonic,
 *                              consumed, records, problem)
 *   tags       list[str], in order of first appearance
 *   counts     list[int], points per tag
 *   steps      bytes of int64, grouped by tag in the order of `tags`
 *   wall_times bytes of float64, same layout
 *   values     bytes of float64, same layout
 *   monotonic  list[bool], whether each tag's steps strictly increase
 *   consumed   bytes of intact records read
 *   records    number of intact records
 *   problem    None, or why reading stopped early / what was skipped
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- CRC32C ------------------------------------------------------------------------ */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        crc_table[0][i] = crc;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

static uint32_t crc_portable(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= crc;
        crc = crc_table[7][word & 0xFF] ^ crc_table[6][(word >> 8) & 0xFF] ^ crc_table[5][(word >> 16) & 0xFF] ^
              crc_table[4][(word >> 24) & 0xFF] ^ crc_table[3][(word >> 32) & 0xFF] ^
              crc_table[2][(word >> 40) & 0xFF] ^ crc_table[1][(word >> 48) & 0xFF] ^ crc_table[0][word >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(const uint8_t *p, size_t n) {
    uint64_t crc = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
        p += 8;
        n -= 8;
    }
    uint32_t c = (uint32_t)crc;
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c ^ 0xFFFFFFFFu;
}
static int have_sse42(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static uint32_t crc_sse42(const uint8_t *p, size_t n) { return crc_portable(p, n); }
static int have_sse42(void) { return 0; }
#endif

static uint32_t (*crc32c)(const uint8_t *, size_t) = crc_portable;

static uint32_t masked_crc(const uint8_t *p, size_t n) {
    uint32_t crc = crc32c(p, n);
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

static uint32_t le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---- protobuf wire format ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} span;

/* Returns 0 on malformed input. */
static int varint(span *s, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && s->p < s->end; shift += 7) {
        uint8_t b = *s->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* Reads one field header and its payload. For length-delimited fields `sub` is the
 * payload; for fixed and varint fields `num` holds the raw bits. */
static int field(span *s, uint32_t *number, int *wire, span *sub, uint64_t *num) {
    uint64_t key, len;
    if (!varint(s, &key)) return 0;
    *number = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    switch (*wire) {
    case 0:
        return varint(s, num);
    case 1:
        if (s->end - s->p < 8) return 0;
        *num = le64(s->p);
        s->p += 8;
        return 1;
    case 5:
        if (s->end - s->p < 4) return 0;
        *num = le32(s->p);
        s->p += 4;
        return 1;
    case 2:
        if (!varint(s, &len) || len > (uint64_t)(s->end - s->p)) return 0;
        sub->p = s->p;
        sub->end = s->p + len;
        s->p += len;
        return 1;
    default:
        return 0;
    }
}

/* ---- per-tag columns --------------------------------------------------------------- */

typedef struct {
    const uint8_t *name;
    size_t name_len;
    int64_t *steps;
    double *walls, *values;
    size_t n, cap;
    int monotonic;
    int plugin; /* 0 unknown, 1 'scalars', 2 another plugin */
} column;

typedef struct {
    column *cols;
    size_t ncols, capcols;
    int32_t *slots; /* open addressing: index into cols, -1 empty */
    size_t nslots;
} table;

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    while (n--) h = (h ^ *p++) * 1099511628211ull;
    return h;
}

static int table_grow_slots(table *t) {
    size_t nslots = t->nslots ? t->nslots * 2 : 16;
    int32_t *slots = malloc(nslots * sizeof(int32_t));
    if (!slots) return 0;
    for (size_t i = 0; i < nslots; i++) slots[i] = -1;
    for (size_t c = 0; c < t->ncols; c++) {
        size_t i = fnv1a(t->cols[c].name, t->cols[c].name_len) & (nslots - 1);
        while (slots[i] >= 0) i = (i + 1) & (nslots - 1);
        slots[i] = (int32_t)c;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 1;
}

/* Returns the column for `name`, creating it; NULL when out of memory. */
static column *table_get(table *t, span name) {
    size_t len = (size_t)(name.end - name.p);
    if (t->ncols * 2 >= t->nslots && !table_grow_slots(t)) return NULL;
    size_t i = fnv1a(name.p, len) & (t->nslots - 1);
    while (t->slots[i] >= 0) {
        column *c = &t->cols[t->slots[i]];
        if (c->name_len == len && memcmp(c->name, name.p, len) == 0) return c;
        i = (i + 1) & (t->nslots - 1);
    }
    if (t->ncols == t->capcols) {
        size_t cap = t->capcols ? t->capcols * 2 : 8;
        column *cols = realloc(t->cols, cap * sizeof(column));
        if (!cols) return NULL;
        t->cols = cols;
        t->capcols = cap;
    }
    column *c = &t->cols[t->ncols];
    memset(c, 0, sizeof(*c));
    c->name = name.p;
    c->name_len = len;
    c->monotonic = 1;
    t->slots[i] = (int32_t)t->ncols++;
    return c;
}

static int column_append(column *c, int64_t step, double wall, double value) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        int64_t *steps = realloc(c->steps, cap * sizeof(int64_t));
        if (!steps) return 0;
        c->steps = steps;
        double *walls = realloc(c->walls, cap * sizeof(double));
        if (!walls) return 0;
        c->walls = walls;
        double *values = realloc(c->values, cap * sizeof(double));
        if (!values) return 0;
        c->values = values;
        c->cap = cap;
    }
    if (c->n && step <= c->steps[c->n - 1]) c->monotonic = 0;
    c->steps[c->n] = step;
    c->walls[c->n] = wall;
    c->values[c->n] = value;
    c->n++;
    return 1;
}

static void table_free(table *t) {
    for (size_t i = 0; i < t->ncols; i++) {
        free(t->cols[i].steps);
        free(t->cols[i].walls);
        free(t->cols[i].values);
    }
    free(t->cols);
    free(t->slots);
}

/* ---- scalar decoding --------------------------------------------------------------- */

enum { DT_FLOAT = 1, DT_DOUBLE = 2, DT_INT32 = 3, DT_UINT8 = 4, DT_INT16 = 5, DT_INT8 = 6, DT_INT64 = 9,
       DT_BFLOAT16 = 14, DT_UINT16 = 17, DT_HALF = 19, DT_UINT32 = 22, DT_UINT64 = 23 };

static double half_to_double(uint32_t h) {
    int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    double v;
    if (exp == 0) v = ldexp((double)mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexp((double)(mant | 0x400), exp - 25);
    return sign ? -v : v;
}

static double bfloat16_to_double(uint32_t b) {
    uint32_t bits = (b & 0xFFFF) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The element of a one-element tensor as a double: from tensor_content bytes (`raw`, in
 * the dtype's little-endian layout) or from the first typed value (`bits`). */
static int tensor_element(int dtype, span raw, int has_bits, uint64_t bits, double *out) {
    size_t n = (size_t)(raw.end - raw.p);
    if (n) {
        uint8_t b[8] = {0};
        memcpy(b, raw.p, n > 8 ? 8 : n);
        bits = le64(b);
    } else if (!has_bits) {
        return 0;
    }
    switch (dtype) {
    case DT_FLOAT: {
        uint32_t u = (uint32_t)bits;
        float f;
        memcpy(&f, &u, 4);
        *out = f;
        return n == 0 || n == 4;
    }
    case DT_DOUBLE: {
        double d;
        memcpy(&d, &bits, 8);
        *out = d;
        return n == 0 || n == 8;
    }
    case DT_HALF: *out = half_to_double((uint32_t)bits & 0xFFFF); return n == 0 || n == 2;
    case DT_BFLOAT16: *out = bfloat16_to_double((uint32_t)bits); return n == 0 || n == 2;
    case DT_INT8: *out = n ? (double)(int8_t)bits : (double)(int32_t)bits; return n == 0 || n == 1;
    case DT_UINT8: *out = (double)(uint8_t)bits; return n == 0 || n == 1;
    case DT_INT16: *out = n ? (double)(int16_t)bits : (double)(int32_t)bits; return n == 0 || n == 2;
    case DT_UINT16: *out = (double)(uint16_t)bits; return n == 0 || n == 2;
    case DT_INT32: *out = (double)(int32_t)bits; return n == 0 || n == 4;
    case DT_UINT32: *out = (double)(uint32_t)bits; return n == 0 || n == 4;
    case DT_INT64: *out = (double)(int64_t)bits; return n == 0 || n == 8;
    case DT_UINT64: *out = (double)bits; return n == 0 || n == 8;
    default: return 0;
    }
}

/* Typed value fields of TensorProto, by dtype: field number and wire type of one element. */
static int value_field(int dtype, int *wire) {
    switch (dtype) {
    case DT_FLOAT: *wire = 5; return 5;
    case DT_DOUBLE: *wire = 1; return 6;
    case DT_INT32: case DT_INT16: case DT_INT8: case DT_UINT8: case DT_UINT16: *wire = 0; return 7;
    case DT_INT64: *wire = 0; return 10;
    case DT_HALF: case DT_BFLOAT16: *wire = 0; return 13;
    case DT_UINT32: *wire = 0; return 16;
    case DT_UINT64: *wire = 0; return 17;
    default: return 0;
    }
}

/* Number of elements of a TensorShapeProto; -1 when malformed or of unknown rank. */
static int64_t shape_elements(span s) {
    int64_t elements = 1;
    uint32_t number;
    int wire;
    span sub;
    uint64_t num;
    while (s.p < s.end) {
        if (!field(&s, &number, &wire, &sub, &num)) return -1;
        if (number == 3 && wire == 0 && num) return -1;
        if (number != 2 || wire != 2) continue;
        int64_t size = 0;
        while (sub.p < sub.end) {
            span name;
            uint64_t v;
            uint32_t n2;
            int w2;
            if (!field(&sub, &n2, &w2, &name, &v)) return -1;
            if (n2 == 1 && w2 == 0) size = (int64_t)v;
        }
        elements *= size;
    }
    return elements;
}

/* Decodes a TensorProto holding one number; 0 if it holds anything else. */
static int tensor_scalar(span s, double *out) {
    int dtype = 0, has_bits = 0, vwire = -1, vnum = 0;
    int64_t elements = 1;
    uint64_t bits = 0;
    span raw = {NULL, NULL};
    span packed = {NULL, NULL};
    uint32_t number;
    int wire;
    span sub;
    uint64_t num;
    span all = s;
    while (s.p < s.end) {
        if (!field(&s, &number, &wire, &sub, &num)) return 0;
        if (number == 1 && wire == 0) dtype = (int)num;
        else if (number == 2 && wire == 2) elements = shape_elements(sub);
        else if (number == 4 && wire == 2) raw = sub;
    }
    if (elements != 1 || !(vnum = value_field(dtype, &vwire))) return 0;
    s = all;
    while (s.p < s.end && !has_bits && !packed.p) {
        if (!field(&s, &number, &wire, &sub, &num)) return 0;
        if ((int)number != vnum) continue;
        if (wire == vwire) {
            bits = num;
            has_bits = 1;
        } else if (wire == 2) {
            packed = sub;
        }
    }
    if (packed.p && packed.p < packed.end) {
        if (vwire == 0) has_bits = varint(&packed, &bits);
        else if (vwire == 5 && packed.end - packed.p >= 4) bits = le32(packed.p), has_bits = 1;
        else if (vwire == 1 && packed.end - packed.p >= 8) bits = le64(packed.p), has_bits = 1;
    }
    return tensor_element(dtype, raw, has_bits, bits, out);
}

/* Plugin name from SummaryMetadata: 1 for 'scalars', 2 for any other, 0 if absent. */
static int plugin_kind(span s) {
    uint32_t number;
    int wire;
    span sub;
    uint64_t num;
    while (s.p < s.end) {
        if (!field(&s, &number, &wire, &sub, &num)) return 0;
        if (number != 1 || wire != 2) continue;
        span pd = sub;
        while (pd.p < pd.end) {
            span name;
            if (!field(&pd, &number, &wire, &name, &num)) return 0;
            if (number == 1 && wire == 2)
                return (name.end - name.p == 7 && memcmp(name.p, "scalars", 7) == 0) ? 1 : 2;
        }
    }
    return 0;
}

/* One Summary.Value. Returns 0 on malformed input, -1 when out of memory. */
static int summary_value(table *t, span s, int64_t step, double wall) {
    span tag = {NULL, NULL}, meta = {NULL, NULL}, tensor = {NULL, NULL}, sub;
    uint32_t number;
    int wire, has_simple = 0;
    uint64_t num, simple = 0;
    while (s.p < s.end) {
        if (!field(&s, &number, &wire, &sub, &num)) return 0;
        if (number == 1 && wire == 2) tag = sub;
        else if (number == 2 && wire == 5) simple = num, has_simple = 1;
        else if (number == 9 && wire == 2) meta = sub;
        else if (number == 8 && wire == 2) tensor = sub;
    }
    if (!tag.p || (!has_simple && !tensor.p)) return 1;
    column *c = table_get(t, tag);
    if (!c) return -1;
    double value;
    if (has_simple) {
        uint32_t u = (uint32_t)simple;
        float f;
        memcpy(&f, &u, 4);
        value = f;
    } else {
        int kind = meta.p ? plugin_kind(meta) : 0;
        if (kind) c->plugin = kind;
        if (c->plugin != 1 || !tensor_scalar(tensor, &value)) return 1;
    }
    return column_append(c, step, wall, value) ? 1 : -1;
}

/* One Event record. Returns 0 on malformed input, -1 when out of memory. */
static int event(table *t, span s) {
    double wall = 0;
    int64_t step = 0;
    uint32_t number;
    int wire;
    span sub;
    uint64_t num;
    span all = s;
    int has_summary = 0;
    while (s.p < s.end) {
        if (!field(&s, &number, &wire, &sub, &num)) return 0;
        if (number == 1 && wire == 1) memcpy(&wall, &num, 8);
        else if (number == 2 && wire == 0) step = (int64_t)num;
        else if (number == 5 && wire == 2) has_summary = 1;
    }
    if (!has_summary) return 1;
    s = all;
    while (s.p < s.end) {
        field(&s, &number, &wire, &sub, &num);
        if (number != 5 || wire != 2) continue;
        while (sub.p < sub.end) {
            span value;
            uint32_t n2;
            int w2;
            if (!field(&sub, &n2, &w2, &value, &num)) return 0;
            if (n2 != 1 || w2 != 2) continue;
            int r = summary_value(t, value, step, wall);
            if (r != 1) return r;
        }
    }
    return 1;
}

/* ---- the record loop --------------------------------------------------------------- */

static int all_zero(const uint8_t *p, size_t n) {
    while (n--)
        if (*p++) return 0;
    return 1;
}

/* Walks the records; sets *problem (static string + offset) when stopping early. */
static int read_records(table *t, const uint8_t *buf, size_t n, int check, size_t *consumed, long long *records,
                        char *problem, size_t problem_len) {
    size_t pos = 0;
    long long count = 0;
    problem[0] = 0;
    while (pos < n) {
        size_t left = n - pos;
        if (all_zero(buf + pos, left < 12 ? left : 12)) {
            snprintf(problem, problem_len, "zero-filled tail at byte %zu", pos);
            break;
        }
        if (left < 12) {
            snprintf(problem, problem_len, "truncated record header at byte %zu", pos);
            break;
        }
        uint64_t len = le64(buf + pos);
        if (check && masked_crc(buf + pos, 8) != le32(buf + pos + 8)) {
            snprintf(problem, problem_len, "record header CRC mismatch at byte %zu", pos);
            break;
        }
        if (len > left - 12 || left - 12 - len < 4) {
            snprintf(problem, problem_len, "truncated record at byte %zu (file still being written?)", pos);
            break;
        }
        const uint8_t *data = buf + pos + 12;
        if (check && masked_crc(data, len) != le32(data + len)) {
            snprintf(problem, problem_len, "record data CRC mismatch at byte %zu", pos);
            break;
        }
        span s = {data, data + len};
        int r = event(t, s);
        if (r < 0) return 0;
        if (r == 0 && !problem[0]) snprintf(problem, problem_len, "malformed event skipped at byte %zu", pos);
        pos += 16 + len;
        count++;
    }
    *consumed = pos;
    *records = count;
    return 1;
}

static PyObject *concat(table *t, size_t total, int which) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * 8));
    if (!out) return NULL;
    char *dst = PyBytes_AS_STRING(out);
    for (size_t i = 0; i < t->ncols; i++) {
        column *c = &t->cols[i];
        const void *src = which == 0 ? (const void *)c->steps : which == 1 ? (const void *)c->walls : c->values;
        if (c->n) memcpy(dst, src, c->n * 8);
        dst += c->n * 8;
    }
    return out;
}

static PyObject *build_result(table *t, size_t consumed, long long records, const char *problem) {
    size_t total = 0;
    for (size_t i = 0; i < t->ncols; i++) total += t->cols[i].n;
    PyObject *tags = PyList_New(0), *counts = PyList_New(0), *mono = PyList_New(0);
    PyObject *steps = concat(t, total, 0), *walls = concat(t, total, 1), *values = concat(t, total, 2);
    PyObject *result = NULL;
    if (!tags || !counts || !mono || !steps || !walls || !values) goto done;
    for (size_t i = 0; i < t->ncols; i++) {
        column *c = &t->cols[i];
        if (!c->n) continue;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)c->name, (Py_ssize_t)c->name_len, "replace");
        PyObject *count = PyLong_FromSize_t(c->n);
        int bad = !name || !count || PyList_Append(tags, name) || PyList_Append(counts, count) ||
                  PyList_Append(mono, c->monotonic ? Py_True : Py_False);
        Py_XDECREF(name);
        Py_XDECREF(count);
        if (bad) goto done;
    }
    result = Py_BuildValue("(OOOOOOnLs)", tags, counts, steps, walls, values, mono, (Py_ssize_t)consumed, records,
                           problem[0] ? problem : NULL);
done:
    Py_XDECREF(tags);
    Py_XDECREF(counts);
    Py_XDECREF(mono);
    Py_XDECREF(steps);
    Py_XDECREF(walls);
    Py_XDECREF(values);
    return result;
}

static PyObject *parse(PyObject *self, PyObject *args) {
    Py_buffer view;
    int check = 1;
    if (!PyArg_ParseTuple(args, "y*|p", &view, &check)) return NULL;
    table t = {0};
    size_t consumed = 0;
    long long records = 0;
    char problem[128];
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = read_records(&t, view.buf, (size_t)view.len, check, &consumed, &records, problem, sizeof problem);
    Py_END_ALLOW_THREADS
    PyObject *result = ok ? build_result(&t, consumed, records, problem) : PyErr_NoMemory();
    table_free(&t);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *crc(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    uint32_t value = masked_crc(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "parse(buffer, check_crc=True) -> scalars of one event file"},
    {"masked_crc32c", crc, METH_VARARGS, "masked_crc32c(buffer) -> TFRecord's masked CRC32C"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tfevents", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tfevents(void) {
    crc_init();
    if (have_sse42()) crc32c = crc_sse42;
    return PyModule_Create(&module);
}
