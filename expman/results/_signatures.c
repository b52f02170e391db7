/* What the runs index compares to know whether a run changed: the stat of each of its files
 * as "mtime_ns:size:inode" ("-" for a file that is not there), joined by "|". index.py has
 * the same functions in Python, used when this module could not be built; tests hold the
 * two to identical output. In C because a refresh of 10,000 runs makes ~80,000 stat calls
 * and Python's overhead per call was most of the time.
 *
 * quick(run_dir: path) -> str | None      the directory and its run.json; None: no run.json
 * full(run_dir: path, watched: path) -> str   each "\n"-separated path of `watched`, relative
 *                                             (the GIL is released while it stats)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

static int append(Buffer *b, const char *text, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + n;
        char *data = PyMem_RawRealloc(b->data, cap);
        if (!data) return -1;
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

/* Appends the stat of `path` and returns 1 when the file is there, 0 when not, -1 on error. */
static int append_stat(Buffer *b, const char *path) {
    struct stat st;
    char text[96];
    if (stat(path, &st) != 0) return append(b, "-", 1) ? -1 : 0;
    long long mtime = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    int n = snprintf(text, sizeof text, "%lld:%lld:%llu", mtime, (long long)st.st_size,
                     (unsigned long long)st.st_ino);
    return append(b, text, (size_t)n) ? -1 : 1;
}

static PyObject *finish(Buffer *b) {
    PyObject *out = PyUnicode_DecodeASCII(b->data ? b->data : "", (Py_ssize_t)b->len, NULL);
    PyMem_RawFree(b->data);
    return out;
}

static PyObject *quick(PyObject *self, PyObject *args) {
    PyObject *run;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &run)) return NULL;
    const char *dir = PyBytes_AS_STRING(run);
    size_t n = (size_t)PyBytes_GET_SIZE(run);
    char path[PATH_MAX];
    Buffer record = {0}, out = {0};
    int found = 0, done = 0;
    Py_BEGIN_ALLOW_THREADS
    if (n + sizeof "/run.json" <= sizeof path) {
        memcpy(path, dir, n);
        memcpy(path + n, "/run.json", sizeof "/run.json");
        found = append_stat(&record, path);
    }
    done = found == 1 && append_stat(&out, dir) >= 0 && !append(&out, "|", 1) &&
           !append(&out, record.data, record.len);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(record.data);
    Py_DECREF(run);
    if (done) return finish(&out);
    PyMem_RawFree(out.data);
    if (found != 0) return PyErr_NoMemory(); /* run.json is there, its signature was not made */
    Py_RETURN_NONE;
}

static PyObject *full(PyObject *self, PyObject *args) {
    PyObject *run, *watched;
    if (!PyArg_ParseTuple(args, "O&O&", PyUnicode_FSConverter, &run, PyUnicode_FSConverter, &watched))
        return NULL;
    const char *dir = PyBytes_AS_STRING(run);
    size_t n = (size_t)PyBytes_GET_SIZE(run);
    const char *rest = PyBytes_AS_STRING(watched);
    const char *end = rest + PyBytes_GET_SIZE(watched);
    char path[PATH_MAX];
    Buffer out = {0};
    int first = 1, failed = 0;
    Py_BEGIN_ALLOW_THREADS  /* stat calls only, no Python objects: refreshing threads run at once */
    while (!failed) {
        const char *stop = memchr(rest, '\n', (size_t)(end - rest));
        if (!stop) stop = end;
        size_t m = (size_t)(stop - rest);
        if (!first && append(&out, "|", 1)) failed = 1;
        if (!failed && n + 1 + m + 1 <= sizeof path) {
            memcpy(path, dir, n);
            path[n] = '/';
            memcpy(path + n + 1, rest, m);
            path[n + 1 + m] = 0;
            if (append_stat(&out, path) < 0) failed = 1;
        } else if (!failed && append(&out, "-", 1)) {
            failed = 1;
        }
        first = 0;
        if (stop == end) break;
        rest = stop + 1;
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(run);
    Py_DECREF(watched);
    if (failed) {
        PyMem_RawFree(out.data);
        return PyErr_NoMemory();
    }
    return finish(&out);
}

static PyMethodDef methods[] = {
    {"quick", quick, METH_VARARGS, "The stat of a run directory and its run.json; None without run.json."},
    {"full", full, METH_VARARGS, "The stats of the watched paths of a run, joined by '|'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_signatures", NULL, -1, methods};

PyMODINIT_FUNC PyInit__signatures(void) { return PyModule_Create(&module); }
