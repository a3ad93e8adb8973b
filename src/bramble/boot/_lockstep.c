/* The lock-step TFTP send loop, with the GIL released.
 *
 * In lock-step (windowsize 1) a transfer is one receive and one send per block, and the time
 * between the client's ACK and our next DATA is the whole of the server's part in each round
 * trip. The Python loop in bramble.boot.tftp spends 2-3 us of interpreter time on that path per
 * block; this module runs the same loop in C, over the ready DATA packets of one slab, and
 * returns to Python for everything else: the end of the slab (so the next one is read while the
 * client works), any datagram that is not the expected ACK, a timeout and an error. The Python
 * loop stays the reference and the fallback when this module was not built.
 *
 * With a fast client (a VM on this host, or loopback) much of a round trip is the scheduler
 * putting the waiting thread to sleep and waking it again. So before it blocks, the loop may
 * poll for the ACK for a short while, like the kernel's SO_BUSY_POLL (which loopback, veth and
 * tap do not offer). The poll is bounded per block by the caller's budget. Whether it pays is
 * kept as a credit that the caller carries from call to call: an ACK caught while polling earns
 * one, an ACK that came too late for the poll (the budget was burnt for nothing) costs
 * SPIN_MISS_COST. The credit starts at, and is capped at, SPIN_CREDIT_MAX: at most 8 misses in a
 * row are paid for, and a client that misses more than one poll in four loses it for good. A poll
 * saves a wake-up (several us here) and a miss burns the whole budget (20 us by default), so a
 * quarter is about where polling stops paying. A client on a real network costs a few wasted
 * polls per transfer, not a core.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#define SPIN_MISS_COST 3
#define SPIN_CREDIT_MAX (8 * SPIN_MISS_COST)
#define SPIN_MAX_NS 1000000LL

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* One datagram: polled for up to spin_ns first (if > 0), then waited for (SO_RCVTIMEO applies).
 * *caught tells whether the poll found it. */
static ssize_t
receive(int fd, unsigned char *in, size_t capacity, long long spin_ns, int *caught)
{
    *caught = 0;
    if (spin_ns > 0) {
        long long deadline = now_ns() + spin_ns;
        do {
            ssize_t n = recv(fd, in, capacity, MSG_DONTWAIT);
            if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                *caught = n >= 0;
                return n;
            }
            cpu_relax();
        } while (now_ns() < deadline);
    }
    return recv(fd, in, capacity, 0);
}

/* run(fd, receive_buffer, slab, start, end, packet_size, end_length, expected, spin_ns, credit)
 *     -> (sent, received, status, error, credit)
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
 *             expected ACK, including that ACK when no packet is left; 0 after a shutdown());
 *   credit    to pass next time (start with credit_max()); at 0 or below polling no longer pays,
 *             and the loop has stopped polling.
 * Send errors are ignored: the datagram is lost like any other and the caller's timeout resends
 * it. ECONNREFUSED (an ICMP error for an earlier send) and EINTR are retried.
 */
static PyObject *
lockstep_run(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    Py_buffer receive_buffer, slab;
    Py_ssize_t start, end, packet_size, end_length;
    unsigned int expected;
    long long spin_ns;
    int credit;
    if (!PyArg_ParseTuple(args, "iw*y*nnnnILi", &fd, &receive_buffer, &slab, &start, &end, &packet_size,
                          &end_length, &expected, &spin_ns, &credit))
        return NULL;
    if (start < 0 || end < start || packet_size <= 4 || end_length < 4 || end_length > packet_size
        || end * packet_size > slab.len || receive_buffer.len < 4 || expected > 0xFFFF || spin_ns < 0
        || spin_ns > SPIN_MAX_NS || credit > SPIN_CREDIT_MAX) {
        PyBuffer_Release(&receive_buffer);
        PyBuffer_Release(&slab);
        PyErr_SetString(PyExc_ValueError, "lock-step arguments out of range");
        return NULL;
    }
    unsigned char *in = receive_buffer.buf;
    const char *packets = slab.buf;
    size_t capacity = (size_t)receive_buffer.len;
    Py_ssize_t index = start, received = 0, status = -1;
    int error = 0;
    if (credit <= 0)
        spin_ns = 0;

    Py_BEGIN_ALLOW_THREADS
    while (index < end || start == end) {
        int caught;
        ssize_t n = receive(fd, in, capacity, spin_ns, &caught);
        if (spin_ns > 0) {
            credit = caught ? (credit < SPIN_CREDIT_MAX ? credit + 1 : credit) : credit - SPIN_MISS_COST;
            if (credit <= 0)
                spin_ns = 0;
        }
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

    PyBuffer_Release(&receive_buffer);
    PyBuffer_Release(&slab);
    return Py_BuildValue("nnnii", index - start, received, status, error, credit);
}

static PyObject *
lockstep_credit_max(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args))
{
    return PyLong_FromLong(SPIN_CREDIT_MAX);
}

static PyMethodDef lockstep_methods[] = {
    {"run", lockstep_run, METH_VARARGS, "Serve one slab of a lock-step TFTP transfer."},
    {"credit_max", lockstep_credit_max, METH_NOARGS, "The polling credit a transfer starts with."},
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
