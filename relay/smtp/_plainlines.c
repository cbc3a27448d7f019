/* The DATA check's fast path, compiled: how long is the run of whole "plain" lines at the
 * start of a buffer. A plain line is one that DATA's line checks pass unchanged: it does
 * not start with a dot (stuffing, or the end of DATA), holds no CR, LF or NUL of its own,
 * ends with CRLF, and has at most max_line characters before it.
 *
 * Why C: this is the same test as the PLAIN_LINES regex in relay/smtp/plainlines.py,
 * which stays as the fallback and the reference. CPython's regex engine takes about
 * 2.6 ms per MB for it, and under load that was half of the event loop's time for 1 MB
 * messages (bench/RESULTS.md); bytes methods (count, find, split) were slower still, and
 * no library does this check. It looks for the bytes that matter (CR, LF, NUL) 16 at a
 * time with SSE2 where there is SSE2 (every x86-64), one at a time through a table
 * elsewhere (bench/micro.py: 0.39 ms per MB a byte at a time on x86-64).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if defined(__SSE2__) && !defined(PLAINLINES_NO_SIMD)  /* the tests build it both ways */
#define PLAINLINES_SSE2 1
#include <emmintrin.h>
#endif

/* CR, LF and NUL: the bytes that end the fast scan of a line's characters. */
static unsigned char special[256];

/* The index of the first CR, LF or NUL in p[i:stop], or stop if there is none. */
static Py_ssize_t
next_special(const unsigned char *p, Py_ssize_t i, Py_ssize_t stop)
{
#ifdef PLAINLINES_SSE2
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    const __m128i nul = _mm_setzero_si128();
    for (; i + 16 <= stop; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
                                   _mm_cmpeq_epi8(v, nul));
        int mask = _mm_movemask_epi8(hit);
        if (mask)
            return i + __builtin_ctz((unsigned int)mask);
    }
#endif
    while (i < stop && !special[p[i]])
        i++;
    return i;
}

static Py_ssize_t
plain_prefix(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_line)
{
    Py_ssize_t done = 0;  /* the end of the last whole plain line */
    Py_ssize_t i = 0;
    while (i < n) {
        if (p[i] == '.')
            return done;
        Py_ssize_t start = i;
        Py_ssize_t stop = n - start > max_line ? start + max_line : n;
        i = next_special(p, start, stop);
        /* i is at the first CR, LF or NUL, or past the longest line allowed, or at the end
         * of what has arrived: only CR LF right here makes a plain line. */
        if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
            return done;
        i += 2;
        done = i;
    }
    return done;
}

PyDoc_STRVAR(plain_lines_doc,
"plain_lines(buffer, end, max_line, /) -> int\n\n"
"The length of the run of whole plain lines at the start of buffer[:end].");

static PyObject *
plain_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t end, max_line, n;
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "plain_lines() takes exactly 3 arguments");
        return NULL;
    }
    end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    max_line = PyLong_AsSsize_t(args[2]);
    if (max_line == -1 && PyErr_Occurred())
        return NULL;
    if (end < 0 || max_line < 0) {
        PyErr_SetString(PyExc_ValueError, "end and max_line must not be negative");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (end > view.len)
        end = view.len;
    n = plain_prefix((const unsigned char *)view.buf, end, max_line);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"plain_lines", (PyCFunction)(void (*)(void))plain_lines, METH_FASTCALL, plain_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_plainlines",
    "The DATA check's fast path (see relay/smtp/plainlines.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__plainlines(void)
{
    special['\r'] = special['\n'] = special['\0'] = 1;
    return PyModule_Create(&module);
}
