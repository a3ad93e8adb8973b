/* The lock-step TFTP send loop, with the GIL released.
 *
 * In lock-step (windowsize 1) a transfer is one receive and one send per block, and the time
 * between the client's ACK and our next DATA is the whole of the server's part in each round
 * trip. The Python loop in bramble.boot.tftp spends 2-3 us of interpreter time on that path per
 * block; this module runs the same loop in C, over the ready DATA packets of one slab, and
 * returns to Python for everything else: the end of the slab (so the next one is read while the
 * client works), any datagram that is not the expected ACK, a timeout and an error. The Python
 * loop stays the reference and the fallback when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

/* run(fd, receive_buffer, slab, start, end, packet_size, end_length, expected)
 *     -> (sent, received, status, error)
 *
 * Waits on the connected socket `fd` for the ACK of block number `expected` (16 bits). Each time
 * it arrives, sends the next DATA packet of `slab` (packet i is at i * packet_size; all are
 * packet_size bytes long except packet end-1, which is end_length bytes), from index `start` up
 * to end-1. Returns:
 *   sent      packets sent (so the last one sent is start + sent - 1);
 *   received  datagrams received (including the one returned, if any);
 *   status    -1 once packet end-1 is sent (the caller prepares the next slab), -2 on a receive
 *             error (`error` is its errno; EAGAIN means SO_RCVTIMEO expired), or n >= 0: a
 *             datagram of n bytes is in receive_buffer and was not handled here (anything but the
 *             expected ACK, including that ACK when no packet is left; 0 after a shutdown()).
 * Send errors are ignored: the datagram is lost like any other and the caller's timeout resends
 * it. ECONNREFUSED (an ICMP error for an earlier send) and EINTR are retried.
 */
static PyObject *
lockstep_run(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    Py_buffer receive, slab;
    Py_ssize_t start, end, packet_size, end_length;
    unsigned int expected;
    if (!PyArg_ParseTuple(args, "iw*y*nnnnI", &fd, &receive, &slab, &start, &end, &packet_size,
                          &end_length, &expected))
        return NULL;
    if (start < 0 || end < start || packet_size <= 4 || end_length < 4 || end_length > packet_size
        || end * packet_size > slab.len || receive.len < 4 || expected > 0xFFFF) {
        PyBuffer_Release(&receive);
        PyBuffer_Release(&slab);
        PyErr_SetString(PyExc_ValueError, "lock-step arguments out of range");
        return NULL;
    }
    unsigned char *in = receive.buf;
    const char *packets = slab.buf;
    size_t capacity = (size_t)receive.len;
    Py_ssize_t index = start, received = 0, status = -1;
    int error = 0;

    Py_BEGIN_ALLOW_THREADS
    while (index < end || start == end) {
        ssize_t n = recv(fd, in, capacity, 0);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED)
                continue;
            error = errno;
            status = -2;
            break;
        }
        received++;
        if (n != 4 || in[0] != 0 || in[1] != 4 || ((unsigned int)in[2] << 8 | in[3]) != expected
            || index == end) {
            status = n;
            break;
        }
        const char *packet = packets + index * packet_size;
        (void)send(fd, packet, (size_t)(index == end - 1 ? end_length : packet_size), 0);
        index++;
        expected = (expected + 1) & 0xFFFF;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&receive);
    PyBuffer_Release(&slab);
    return Py_BuildValue("nnni", index - start, received, status, error);
}

static PyMethodDef lockstep_methods[] = {
    {"run", lockstep_run, METH_VARARGS, "Serve one slab of a lock-step TFTP transfer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lockstep_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_lockstep",
    .m_doc = "The lock-step TFTP send loop in C, with the GIL released.",
    .m_size = -1,
    .m_methods = lockstep_methods,
};

PyMODINIT_FUNC
PyInit__lockstep(void)
{
    return PyModule_Create(&lockstep_module);
}
