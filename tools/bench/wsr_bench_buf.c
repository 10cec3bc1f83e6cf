//  wsr_bench_buf — a bounded, growable byte buffer: publisher I/O, pipe lines
//
//  Bytes are appended at the end and consumed from the front; the consumed
//  part is reclaimed when the buffer would otherwise grow. One byte more than
//  the capacity is allocated so that the data can always be NUL-terminated
//  (lines are parsed with the string functions).

#include "wsr_bench_classes.h"

#define S_FIRST_CAP     4096        //  first allocation

struct _wsr_bench_buf_t {
    char *data;                     //  heap bytes (owned), cap + 1
    size_t off;                     //  consumed so far
    size_t len;                     //  filled so far
    size_t cap;                     //  allocated, without the NUL byte
    size_t limit;                   //  unconsumed bytes at most
};

//  --------------------------------------------------------------------------
//  Create an empty buffer (with room for S_FIRST_CAP bytes).
wsr_bench_buf_t *
wsr_bench_buf_new (size_t limit)
{
    wsr_bench_buf_t *self = (wsr_bench_buf_t *) zmalloc (sizeof (wsr_bench_buf_t));
    assert (self);
    self->limit = limit;
    self->cap = S_FIRST_CAP;
    self->data = (char *) zmalloc (self->cap + 1);
    assert (self->data);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the buffer; safe on NULL.
void
wsr_bench_buf_destroy (wsr_bench_buf_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_buf_t *self = *self_p;
        free (self->data);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Compact before growing: a buffer that is consumed as fast as it is filled
//  never grows past its largest burst.
int
wsr_bench_buf_append (wsr_bench_buf_t *self, const void *data, size_t len)
{
    assert (self);
    if (self->len - self->off + len > self->limit)
        return -1;
    if (self->off && self->off == self->len)
        self->off = self->len = 0;
    if (self->len + len > self->cap) {
        if (self->off) {
            memmove (self->data, self->data + self->off, self->len - self->off);
            self->len -= self->off;
            self->off = 0;
        }
        while (self->len + len > self->cap)
            self->cap *= 2;
        self->data = (char *) realloc (self->data, self->cap + 1);
        assert (self->data);
    }
    memcpy (self->data + self->len, data, len);
    self->len += len;
    self->data [self->len] = 0;
    return 0;
}

//  --------------------------------------------------------------------------
//  The unconsumed bytes, NUL-terminated.
char *
wsr_bench_buf_data (wsr_bench_buf_t *self)
{
    assert (self);
    return self->data + self->off;
}

//  --------------------------------------------------------------------------
//  Number of unconsumed bytes.
size_t
wsr_bench_buf_size (wsr_bench_buf_t *self)
{
    assert (self);
    return self->len - self->off;
}

//  --------------------------------------------------------------------------
//  Consume len bytes (at most what is there).
void
wsr_bench_buf_consume (wsr_bench_buf_t *self, size_t len)
{
    assert (self);
    assert (len <= self->len - self->off);
    self->off += len;
}

//  --------------------------------------------------------------------------
//  Next whole line, LF replaced by NUL.
char *
wsr_bench_buf_line (wsr_bench_buf_t *self)
{
    assert (self);
    if (self->off == self->len)
        return NULL;
    char *start = self->data + self->off;
    char *newline = (char *) memchr (start, '\n', self->len - self->off);
    if (!newline)
        return NULL;
    *newline = 0;
    self->off += (size_t) (newline + 1 - start);
    return start;
}

//  --------------------------------------------------------------------------
//  Drop everything (the allocation stays for reuse).
void
wsr_bench_buf_reset (wsr_bench_buf_t *self)
{
    assert (self);
    self->off = self->len = 0;
    self->data [0] = 0;
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_buf_test (bool verbose)
{
    (void) verbose;
    wsr_bench_buf_t *buf = wsr_bench_buf_new (10000);
    assert (wsr_bench_buf_size (buf) == 0 && streq (wsr_bench_buf_data (buf), ""));
    assert (wsr_bench_buf_line (buf) == NULL);

    //  Lines split anywhere come out whole, in order
    const char *text = "S 1 2 3\nR {\"a\":1}\nE 5";
    for (size_t i = 0; i < strlen (text); i++)
        assert (wsr_bench_buf_append (buf, text + i, 1) == 0);
    char *line = wsr_bench_buf_line (buf);
    assert (line && streq (line, "S 1 2 3"));
    line = wsr_bench_buf_line (buf);
    assert (line && streq (line, "R {\"a\":1}"));
    assert (wsr_bench_buf_line (buf) == NULL);
    assert (streq (wsr_bench_buf_data (buf), "E 5") && wsr_bench_buf_size (buf) == 3);
    assert (wsr_bench_buf_append (buf, "\n", 1) == 0);
    line = wsr_bench_buf_line (buf);
    assert (line && streq (line, "E 5") && wsr_bench_buf_size (buf) == 0);

    //  Consumed bytes are reclaimed: filling and draining 5,000 bytes at a
    //  time many times never hits the limit
    char block [5000];
    memset (block, 'x', sizeof block);
    for (int i = 0; i < 100; i++) {
        assert (wsr_bench_buf_append (buf, block, sizeof block) == 0);
        assert (wsr_bench_buf_size (buf) == sizeof block);
        wsr_bench_buf_consume (buf, 1000);
        assert (wsr_bench_buf_data (buf) [0] == 'x');
        wsr_bench_buf_consume (buf, sizeof block - 1000);
    }
    //  The limit counts unconsumed bytes; a refused append changes nothing
    assert (wsr_bench_buf_append (buf, block, sizeof block) == 0);
    assert (wsr_bench_buf_append (buf, block, sizeof block) == 0);
    assert (wsr_bench_buf_append (buf, "y", 1) == -1);
    assert (wsr_bench_buf_size (buf) == 10000);
    wsr_bench_buf_consume (buf, 1);
    assert (wsr_bench_buf_append (buf, "y", 1) == 0);
    assert (wsr_bench_buf_data (buf) [9999] == 'y' && wsr_bench_buf_data (buf) [10000] == 0);
    wsr_bench_buf_reset (buf);
    assert (wsr_bench_buf_size (buf) == 0 && wsr_bench_buf_line (buf) == NULL);
    wsr_bench_buf_destroy (&buf);
    assert (buf == NULL);
    wsr_bench_buf_destroy (&buf);
}
