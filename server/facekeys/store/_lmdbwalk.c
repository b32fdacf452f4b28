/* _lmdbwalk: the B-tree search of facekeys.store.lmdb_pages.ValueLocator in C (optional; the module has the same
 * walk in Python, which this must agree with: tests/store/test_lmdb_pages.py runs both against py-lmdb).
 *
 * leaves(map, page_size, root, keys, fd) -> [None | (lo | hi << 16, flags, data offset)]
 *   map: a buffer over the whole LMDB data file; root: the tree's root page; keys: bytes, searched together one
 *   level at a time; fd >= 0: each level's pages are asked of the kernel (posix_fadvise WILLNEED) before any is
 *   read. Raises ValueError on anything that is not a well-formed branch / leaf page within the buffer
 *   (message starting "past end" when a page lies beyond it: the caller remaps a grown file and retries).
 * resident(map, ranges) -> bytes: per (offset, length) range of the map, 1 when every page of it is in the page
 *   cache (mincore; reads nothing), else 0.
 * read_spans(fd, page_size, places, spans, out) -> bytes: for each (offset, size) place (or None), check the header
 *   of the value's first overflow page (page number, P_OVERFLOW, page count) and read its (start, length) spans
 *   one after another into row i of `out` (a writable C-contiguous buffer of len(places) rows of sum(lengths)
 *   bytes); 1 where that succeeded, else 0 (the row then holds nothing to trust). GIL released for the reads.
 * Layout: LMDB 0.9, 64-bit little-endian (see lmdb_pages.py). The GIL is released during the walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define HDR 16
#define P_BRANCH 0x01
#define P_LEAF 0x02
#define P_LEAF2 0x20
#define MAX_DEPTH 32

typedef struct {
    const uint8_t *m;
    uint64_t len, ps;
} Map;

enum { OK = 0, BAD = 1, PAST_END = 2 };

static uint16_t u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* node i of the page at off: fills lo, hi, flags, key, ksize, data offset */
static int node(const Map *mp, uint64_t off, uint64_t i, uint16_t *lo, uint16_t *hi, uint16_t *flags,
                const uint8_t **key, uint16_t *ksize, uint64_t *data_at) {
    uint16_t ptr = u16(mp->m + off + HDR + 2 * i);
    if (ptr < HDR || (uint64_t)ptr + 8 > mp->ps) return BAD;
    const uint8_t *n = mp->m + off + ptr;
    *lo = u16(n); *hi = u16(n + 2); *flags = u16(n + 4); *ksize = u16(n + 6);
    if ((uint64_t)ptr + 8 + *ksize > mp->ps) return BAD;
    *key = n + 8;
    *data_at = off + ptr + 8 + *ksize;
    return OK;
}

static int cmp(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) {
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na < nb ? -1 : na > nb);
}

typedef struct {
    uint64_t pg;      /* page to search next */
    int state;        /* 0 walking, 1 found, 2 absent */
    uint32_t size;    /* found: lo | hi << 16 */
    uint16_t flags;   /* found: node flags */
    uint64_t data_at; /* found: data offset */
} Walk;

/* one level for one key */
static int step(const Map *mp, Walk *w, const uint8_t *key, size_t klen) {
    uint64_t off = w->pg * mp->ps;
    if (w->pg > mp->len / mp->ps || off + mp->ps > mp->len) return PAST_END;
    const uint8_t *p = mp->m + off;
    uint16_t pflags = u16(p + 10), lower = u16(p + 12), upper = u16(p + 14);
    if ((pflags & P_LEAF2) || !(pflags & (P_BRANCH | P_LEAF)) || lower < HDR || lower > upper || upper > mp->ps)
        return BAD;
    int64_t n = (lower - HDR) >> 1;
    uint16_t lo, hi, fl, ks;
    const uint8_t *k;
    uint64_t d;
    if (pflags & P_LEAF) {
        int64_t a = 0, b = n - 1;
        while (a <= b) {
            int64_t mid = (a + b) >> 1;
            if (node(mp, off, mid, &lo, &hi, &fl, &k, &ks, &d)) return BAD;
            int c = cmp(k, ks, key, klen);
            if (c == 0) {
                w->state = 1; w->size = (uint32_t)lo | ((uint32_t)hi << 16); w->flags = fl; w->data_at = d;
                return OK;
            }
            if (c < 0) a = mid + 1; else b = mid - 1;
        }
        w->state = 2;
        return OK;
    }
    int64_t a = 1, b = n - 1, child = 0;
    while (a <= b) {
        int64_t mid = (a + b) >> 1;
        if (node(mp, off, mid, &lo, &hi, &fl, &k, &ks, &d)) return BAD;
        if (cmp(k, ks, key, klen) <= 0) { child = mid; a = mid + 1; } else b = mid - 1;
    }
    if (n < 1 || node(mp, off, child, &lo, &hi, &fl, &k, &ks, &d)) return BAD;
    w->pg = (uint64_t)lo | ((uint64_t)hi << 16) | ((uint64_t)fl << 32);
    return OK;
}

static PyObject *py_leaves(PyObject *self, PyObject *args) {
    PyObject *map_o, *keys_o;
    unsigned long long ps, root;
    int fd;
    if (!PyArg_ParseTuple(args, "OKKOi", &map_o, &ps, &root, &keys_o, &fd)) return NULL;
    if (ps < 512 || ps > (1 << 16)) { PyErr_SetString(PyExc_ValueError, "page size out of range"); return NULL; }
    PyObject *keys = PySequence_Fast(keys_o, "keys must be a sequence of bytes");
    if (!keys) return NULL;
    Py_ssize_t nk = PySequence_Fast_GET_SIZE(keys);
    Py_buffer view;
    if (PyObject_GetBuffer(map_o, &view, PyBUF_SIMPLE)) { Py_DECREF(keys); return NULL; }
    Walk *walks = PyMem_Calloc(nk ? nk : 1, sizeof(Walk));
    const uint8_t **kp = PyMem_Calloc(nk ? nk : 1, sizeof(*kp));
    size_t *kl = PyMem_Calloc(nk ? nk : 1, sizeof(*kl));
    PyObject *out = NULL;
    if (!walks || !kp || !kl) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PySequence_Fast_GET_ITEM(keys, i);
        if (!PyBytes_Check(k)) { PyErr_SetString(PyExc_TypeError, "keys must be bytes"); goto done; }
        kp[i] = (const uint8_t *)PyBytes_AS_STRING(k);
        kl[i] = (size_t)PyBytes_GET_SIZE(k);
        walks[i].pg = root;
    }
    Map mp = {(const uint8_t *)view.buf, (uint64_t)view.len, ps};
    int rc = OK;
    Py_BEGIN_ALLOW_THREADS
    for (int level = 0; level < MAX_DEPTH && rc == OK; level++) {
        int pending = 0;
        uint64_t last = UINT64_MAX;
        for (Py_ssize_t i = 0; i < nk; i++) {
            if (walks[i].state) continue;
            pending = 1;
#ifdef POSIX_FADV_WILLNEED
            if (fd >= 0 && walks[i].pg != last) {  /* keys come sorted: neighbours share pages */
                (void)posix_fadvise(fd, (off_t)(walks[i].pg * ps), (off_t)ps, POSIX_FADV_WILLNEED);
                last = walks[i].pg;
            }
#endif
        }
        if (!pending) break;
        for (Py_ssize_t i = 0; i < nk && rc == OK; i++)
            if (!walks[i].state) rc = step(&mp, &walks[i], kp[i], kl[i]);
        if (level == MAX_DEPTH - 1 && rc == OK)
            for (Py_ssize_t i = 0; i < nk; i++)
                if (!walks[i].state) rc = BAD;
    }
    Py_END_ALLOW_THREADS
    if (rc == PAST_END) { PyErr_SetString(PyExc_ValueError, "past end of the mapped file"); goto done; }
    if (rc != OK) { PyErr_SetString(PyExc_ValueError, "not a well-formed LMDB B-tree page"); goto done; }
    out = PyList_New(nk);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *item;
        if (walks[i].state == 1)
            item = Py_BuildValue("(kHK)", (unsigned long)walks[i].size, walks[i].flags,
                                 (unsigned long long)walks[i].data_at);
        else {
            item = Py_None;
            Py_INCREF(item);
        }
        if (!item) { Py_CLEAR(out); goto done; }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyMem_Free(walks);
    PyMem_Free(kp);
    PyMem_Free(kl);
    PyBuffer_Release(&view);
    Py_DECREF(keys);
    return out;
}

static PyObject *py_resident(PyObject *self, PyObject *args) {
    PyObject *map_o, *ranges_o;
    if (!PyArg_ParseTuple(args, "OO", &map_o, &ranges_o)) return NULL;
    PyObject *ranges = PySequence_Fast(ranges_o, "ranges must be a sequence of (offset, length)");
    if (!ranges) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(map_o, &view, PyBUF_SIMPLE)) { Py_DECREF(ranges); return NULL; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ranges);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    unsigned char vec[256];
    const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        unsigned long long off, len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ranges, i), "KK", &off, &len)) { Py_CLEAR(out); break; }
        int all = off + len <= (uint64_t)view.len && len > 0;
        uint64_t start = off - off % page;
        while (all && start < off + len) {
            uint64_t chunk = off + len - start;
            if (chunk > 256 * page) chunk = 256 * page;
            if (mincore((char *)view.buf + start, (size_t)chunk, vec) != 0) { all = 0; break; }
            for (uint64_t j = 0; j < (chunk + page - 1) / page; j++)
                if (!(vec[j] & 1)) { all = 0; break; }
            start += chunk;
        }
        PyBytes_AS_STRING(out)[i] = (char)all;
    }
    PyBuffer_Release(&view);
    Py_DECREF(ranges);
    return out;
}

#define MAX_SPANS 64

static PyObject *py_read_spans(PyObject *self, PyObject *args) {
    int fd;
    unsigned long long ps;
    PyObject *places_o, *spans_o, *out_o;
    if (!PyArg_ParseTuple(args, "iKOOO", &fd, &ps, &places_o, &spans_o, &out_o)) return NULL;
    unsigned long long start[MAX_SPANS], len[MAX_SPANS], row = 0;
    PyObject *spans = PySequence_Fast(spans_o, "spans must be a sequence of (start, length)");
    if (!spans) return NULL;
    Py_ssize_t ns = PySequence_Fast_GET_SIZE(spans);
    if (ns > MAX_SPANS) { Py_DECREF(spans); PyErr_SetString(PyExc_ValueError, "too many spans"); return NULL; }
    for (Py_ssize_t j = 0; j < ns; j++) {
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(spans, j), "KK", &start[j], &len[j])) {
            Py_DECREF(spans);
            return NULL;
        }
        row += len[j];
    }
    Py_DECREF(spans);
    PyObject *places = PySequence_Fast(places_o, "places must be a sequence");
    if (!places) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(places);
    Py_buffer out;
    if (PyObject_GetBuffer(out_o, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) { Py_DECREF(places); return NULL; }
    if ((unsigned long long)out.len != (unsigned long long)n * row) {
        PyBuffer_Release(&out);
        Py_DECREF(places);
        PyErr_SetString(PyExc_ValueError, "out must hold len(places) rows of sum(span lengths) bytes");
        return NULL;
    }
    unsigned long long *off = PyMem_Calloc(n ? n : 1, sizeof(*off)), *size = PyMem_Calloc(n ? n : 1, sizeof(*size));
    PyObject *ok = PyBytes_FromStringAndSize(NULL, n);
    if (!off || !size || !ok) { PyErr_NoMemory(); Py_CLEAR(ok); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pl = PySequence_Fast_GET_ITEM(places, i);
        if (pl == Py_None) { off[i] = 0; continue; }
        if (!PyArg_ParseTuple(pl, "KK", &off[i], &size[i])) { Py_CLEAR(ok); goto done; }
    }
    char *flags = PyBytes_AS_STRING(ok);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        flags[i] = 0;
        if (off[i] < HDR) continue;
        uint8_t head[HDR];
        uint64_t first = off[i] - HDR, pgno, pages_want = (size[i] + HDR + ps - 1) / ps;
        uint16_t pflags;
        uint32_t pages;
        uint8_t *dst = (uint8_t *)out.buf + (uint64_t)i * row;
        Py_ssize_t j0 = 0;
        if (ns > 0 && start[0] == 0) {  /* the header and the first span in one read */
            if (len[0] > size[i]) continue;
            struct iovec iov[2] = {{head, HDR}, {dst, (size_t)len[0]}};
            if (preadv(fd, iov, 2, (off_t)first) != (ssize_t)(HDR + len[0])) continue;
            dst += len[0];
            j0 = 1;
        } else if (pread(fd, head, HDR, (off_t)first) != HDR) {
            continue;
        }
        memcpy(&pgno, head, 8); memcpy(&pflags, head + 10, 2); memcpy(&pages, head + 12, 4);
        if (pgno * ps != first || !(pflags & 0x04) || pages != pages_want) continue;
        int good = 1;
        for (Py_ssize_t j = j0; j < ns && good; j++) {
            good = start[j] + len[j] <= size[i] &&
                   pread(fd, dst, (size_t)len[j], (off_t)(off[i] + start[j])) == (ssize_t)len[j];
            dst += len[j];
        }
        flags[i] = (char)good;
    }
    Py_END_ALLOW_THREADS
done:
    PyMem_Free(off);
    PyMem_Free(size);
    PyBuffer_Release(&out);
    Py_DECREF(places);
    return ok;
}

static PyMethodDef methods[] = {
    {"read_spans", py_read_spans, METH_VARARGS,
     "read_spans(fd, page_size, places, spans, out) -> bytes: checked reads of values' spans into out's rows."},
    {"resident", py_resident, METH_VARARGS,
     "resident(map, ranges) -> bytes: 1 where every page of the (offset, length) range is in the page cache."},
    {"leaves", py_leaves, METH_VARARGS,
     "leaves(map, page_size, root, keys, fd) -> [None | (size, flags, data offset)]: LMDB B-tree search."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_lmdbwalk",
                                    "LMDB B-tree search for facekeys.store.lmdb_pages (optional).", -1, methods};

PyMODINIT_FUNC PyInit__lmdbwalk(void) { return PyModule_Create(&moddef); }
