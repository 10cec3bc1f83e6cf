//  wsr_bench_rx — what the receiving side of a bench process counts, mergeable across processes
//
//  Counting. A session tracks its next expected sequence and a 64-bit window
//  of the ones before it: a jump ahead counts the gap as loss; a sequence
//  seen before is a duplicate; an older one not seen before is reordered
//  (and no longer lost). At the end, a session's missing tail up to the last
//  sequence its user (or the channel) was sent is loss too (counted by the
//  sessions), so a session closed by the server loses what came after.
//  Children send their counters to the parent as one JSON line; the parent
//  adds them up field by field (histograms as sparse bucket arrays).

#include "wsr_bench_classes.h"

//  Name and place of each plain counter, for the pipe
typedef struct {
    const char *name;               //  JSON key
    size_t offset;                  //  of a uint64_t in wsr_bench_rx_t
} s_field_t;

#define S_FIELD(f) { #f, offsetof (wsr_bench_rx_t, f) }
static const s_field_t s_fields [] = {
    S_FIELD (attempted), S_FIELD (established), S_FIELD (slow_established), S_FIELD (failed),
    S_FIELD (fail_socket), S_FIELD (fail_timeout), S_FIELD (fail_status),
    S_FIELD (fail_accept), S_FIELD (fail_eof), S_FIELD (fail_response),
    S_FIELD (fail_aborted), S_FIELD (open), S_FIELD (warm), S_FIELD (received),
    S_FIELD (expected), S_FIELD (loss), S_FIELD (duplicates), S_FIELD (reordered),
    S_FIELD (misrouted), S_FIELD (foreign), S_FIELD (final_received),
    S_FIELD (final_expected), S_FIELD (closed_by_server), S_FIELD (protocol_errors),
    S_FIELD (pongs), S_FIELD (send_errors), S_FIELD (slow_closed)
};
#define S_FIELDS (sizeof s_fields / sizeof s_fields [0])

static uint64_t *
s_field (wsr_bench_rx_t *self, size_t i)
{
    return (uint64_t *) ((char *) self + s_fields [i].offset);
}

//  --------------------------------------------------------------------------
//  Create zeroed counters.
wsr_bench_rx_t *
wsr_bench_rx_new (void)
{
    wsr_bench_rx_t *self = (wsr_bench_rx_t *) zmalloc (sizeof (wsr_bench_rx_t));
    assert (self);
    self->handshake = wsr_bench_hist_new ();
    self->latency = wsr_bench_hist_new ();
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy them; safe on NULL.
void
wsr_bench_rx_destroy (wsr_bench_rx_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_rx_t *self = *self_p;
        wsr_bench_hist_destroy (&self->handshake);
        wsr_bench_hist_destroy (&self->latency);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Zero every counter and histogram (the histograms stay allocated).
void
wsr_bench_rx_reset (wsr_bench_rx_t *self)
{
    assert (self);
    wsr_bench_hist_t *handshake = self->handshake;
    wsr_bench_hist_t *latency = self->latency;
    memset (self, 0, sizeof *self);
    self->handshake = handshake;
    self->latency = latency;
    wsr_bench_hist_reset (handshake);
    wsr_bench_hist_reset (latency);
}

//  --------------------------------------------------------------------------
//  One measured message's sequence on one session.
void
wsr_bench_rx_sequence (wsr_bench_rx_t *self, wsr_bench_seq_t *state, uint32_t seq)
{
    assert (self);
    assert (state);
    if (seq >= state->next) {
        uint64_t shift = (uint64_t) seq - state->next + 1;
        self->loss += seq - state->next;
        state->window = shift >= 64? 0: state->window << shift;
        state->window |= 1;
        state->next = seq + 1;
    }
    else {
        uint32_t back = state->next - 1 - seq;
        if (back < 64 && (state->window & (1ULL << back)))
            self->duplicates++;
        else {
            //  A gap counted as loss is filled after all (older than the
            //  window: taken as late, not as a duplicate)
            self->reordered++;
            if (self->loss)
                self->loss--;
            if (back < 64)
                state->window |= 1ULL << back;
        }
    }
}

//  --------------------------------------------------------------------------
//  One JSON object per child, sent once at its end.
json_t *
wsr_bench_rx_to_json (wsr_bench_rx_t *self)
{
    assert (self);
    json_t *json = json_object ();
    for (size_t i = 0; i < S_FIELDS; i++)
        json_object_set_new (json, s_fields [i].name,
                             json_integer ((json_int_t) *s_field (self, i)));
    json_object_set_new (json, "close_codes",
                         wsr_bench_codes_to_json (self->close_codes, WSR_BENCH_CLOSE_SLOTS,
                                                  WSR_BENCH_CLOSE_BASE, WSR_BENCH_CLOSE_OTHER));
    json_object_set_new (json, "hs_status",
                         wsr_bench_codes_to_json (self->hs_status, WSR_BENCH_STATUS_SLOTS,
                                                  WSR_BENCH_STATUS_BASE, -1));
    json_object_set_new (json, "times", json_pack ("[IIII]",
                         (json_int_t) self->t_first_start, (json_int_t) self->t_last_established,
                         (json_int_t) self->t_first_rx, (json_int_t) self->t_last_rx));
    json_object_set_new (json, "handshake", wsr_bench_hist_to_json (self->handshake));
    json_object_set_new (json, "latency", wsr_bench_hist_to_json (self->latency));
    return json;
}

//  Earliest of two times, 0 meaning unset
static int64_t
s_first (int64_t a, int64_t b)
{
    return !a? b: !b? a: a < b? a: b;
}

//  --------------------------------------------------------------------------
//  Counts add up; times keep the earliest start and the latest end.
void
wsr_bench_rx_merge (wsr_bench_rx_t *self, json_t *json)
{
    assert (self);
    for (size_t i = 0; i < S_FIELDS; i++)
        *s_field (self, i) += (uint64_t) json_integer_value (
            json_object_get (json, s_fields [i].name));
    wsr_bench_codes_merge (self->close_codes, WSR_BENCH_CLOSE_SLOTS, WSR_BENCH_CLOSE_BASE,
                           WSR_BENCH_CLOSE_OTHER, json_object_get (json, "close_codes"));
    wsr_bench_codes_merge (self->hs_status, WSR_BENCH_STATUS_SLOTS, WSR_BENCH_STATUS_BASE, -1,
                           json_object_get (json, "hs_status"));
    json_t *times = json_object_get (json, "times");
    self->t_first_start = s_first (self->t_first_start,
                                   json_integer_value (json_array_get (times, 0)));
    int64_t last = json_integer_value (json_array_get (times, 1));
    if (last > self->t_last_established)
        self->t_last_established = last;
    self->t_first_rx = s_first (self->t_first_rx,
                                json_integer_value (json_array_get (times, 2)));
    last = json_integer_value (json_array_get (times, 3));
    if (last > self->t_last_rx)
        self->t_last_rx = last;
    wsr_bench_hist_merge (self->handshake, json_object_get (json, "handshake"));
    wsr_bench_hist_merge (self->latency, json_object_get (json, "latency"));
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_rx_test (bool verbose)
{
    (void) verbose;
    wsr_bench_rx_t *rx = wsr_bench_rx_new ();

    //  Sequences: gap, duplicate, late arrival, one older than the window
    wsr_bench_seq_t state = { .next = 1 };
    uint32_t seqs [] = { 1, 2, 5, 5, 3, 6 };      //  4 lost, 5 twice, 3 late
    for (size_t i = 0; i < sizeof seqs / sizeof seqs [0]; i++)
        wsr_bench_rx_sequence (rx, &state, seqs [i]);
    assert (rx->duplicates == 1 && rx->reordered == 1 && rx->loss == 1);
    assert (state.next == 7);
    wsr_bench_rx_sequence (rx, &state, 100);        //  7..99 lost
    assert (rx->loss == 1 + 93);
    wsr_bench_rx_sequence (rx, &state, 4);          //  late, beyond the window
    assert (rx->reordered == 2 && rx->loss == 93 && rx->duplicates == 1);
    wsr_bench_rx_sequence (rx, &state, 99);         //  late, inside the window
    wsr_bench_rx_sequence (rx, &state, 99);         //  then a duplicate
    assert (rx->reordered == 3 && rx->loss == 92 && rx->duplicates == 2);

    //  JSON round trip: two children add up
    wsr_bench_rx_reset (rx);
    assert (rx->loss == 0 && rx->reordered == 0);
    rx->established = 5;
    rx->slow_closed = 2;
    rx->close_codes [1] = 3;
    rx->close_codes [WSR_BENCH_CLOSE_OTHER] = 1;
    rx->hs_status [503 - WSR_BENCH_STATUS_BASE] = 4;
    rx->t_first_start = 100;
    rx->t_last_established = 200;
    rx->t_first_rx = 0;                             //  this child received nothing
    rx->t_last_rx = 0;
    wsr_bench_hist_add (rx->latency, 1000);
    wsr_bench_hist_add (rx->handshake, 2000);
    json_t *one = wsr_bench_rx_to_json (rx);
    rx->t_first_start = 50;
    rx->t_last_established = 150;
    rx->t_first_rx = 300;
    rx->t_last_rx = 400;
    json_t *two = wsr_bench_rx_to_json (rx);
    wsr_bench_rx_t *sum = wsr_bench_rx_new ();
    wsr_bench_rx_merge (sum, one);
    wsr_bench_rx_merge (sum, two);
    json_decref (one);
    json_decref (two);
    assert (sum->established == 10 && sum->slow_closed == 4 && sum->loss == 0);
    assert (sum->close_codes [1] == 6 && sum->close_codes [WSR_BENCH_CLOSE_OTHER] == 2);
    assert (sum->hs_status [503 - WSR_BENCH_STATUS_BASE] == 8);
    assert (sum->t_first_start == 50 && sum->t_last_established == 200);
    assert (sum->t_first_rx == 300 && sum->t_last_rx == 400);
    assert (wsr_bench_hist_count (sum->latency) == 2);
    assert (wsr_bench_hist_count (sum->handshake) == 2);
    assert (wsr_bench_hist_max (sum->handshake) == 2000);
    wsr_bench_rx_destroy (&sum);
    wsr_bench_rx_destroy (&rx);
    assert (!rx);
}
