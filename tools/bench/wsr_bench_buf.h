//  wsr_bench_buf — a bounded, growable byte buffer: publisher I/O, pipe lines

#ifndef WSR_BENCH_BUF_H_INCLUDED
#define WSR_BENCH_BUF_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_buf_t wsr_bench_buf_t;

//  Create an empty buffer that holds at most limit unconsumed bytes.
wsr_bench_buf_t *
    wsr_bench_buf_new (size_t limit);

//  Destroy the buffer; safe on NULL.
void
    wsr_bench_buf_destroy (wsr_bench_buf_t **self_p);

//  Append len bytes. Returns 0, or -1 (nothing appended) if the buffer
//  would then hold more than its limit.
int
    wsr_bench_buf_append (wsr_bench_buf_t *self, const void *data, size_t len);

//  The unconsumed bytes (owned by the buffer, valid until the next append),
//  always followed by a NUL.
char *
    wsr_bench_buf_data (wsr_bench_buf_t *self);

//  Number of unconsumed bytes.
size_t
    wsr_bench_buf_size (wsr_bench_buf_t *self);

//  Mark the first len unconsumed bytes as consumed.
void
    wsr_bench_buf_consume (wsr_bench_buf_t *self, size_t len);

//  Consume the next whole line and return it without its LF, NUL-terminated
//  (owned by the buffer, valid until the next append); NULL if no LF yet.
char *
    wsr_bench_buf_line (wsr_bench_buf_t *self);

//  Drop everything.
void
    wsr_bench_buf_reset (wsr_bench_buf_t *self);

//  Self test
void
    wsr_bench_buf_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
