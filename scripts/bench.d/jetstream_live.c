//  jetstream_live — what live delivery with stream sequences costs on NATS
//
//  Compares ways for the bridge to receive what backends publish on
//  world.updates.user.*: a core subscription without a stream (core), the
//  same with a stream storing the subjects (stored: the price of history
//  alone, but no sequence on live messages), a core subscription to the
//  stream's RePublish copies (republish: wsr.live.>, headers Nats-Sequence /
//  Nats-Last-Sequence), and an ordered push consumer over the stream
//  (consumer: sequence from the ack subject). One publisher sends N plain
//  messages of 100 bytes to 1,000 subjects; we report the rate and the CPU
//  of nats-server and of this process (libnats threads) per message.
//
//  Build: cc -O2 -o /tmp/jetstream_live scripts/bench.d/jetstream_live.c -lnats
//  Run:   nats-server -js -a 127.0.0.1 -p 4333 -sd /tmp/js & 
//         /tmp/jetstream_live 4333 $! core|stored|republish|consumer 200000

#include <nats/nats.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static atomic_long s_received;
static atomic_long s_bad;
static const char *s_mode;

static double
s_now (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

//  utime + stime of a process, seconds
static double
s_cpu_of (int pid)
{
    char path [64], buf [1024];
    snprintf (path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen (path, "r");
    if (!f || !fgets (buf, sizeof buf, f))
        return -1;
    fclose (f);
    char *p = strrchr (buf, ')');
    unsigned long utime, stime;
    //  After ")": state ppid pgrp session tty tpgid flags minflt cminflt
    //  majflt cmajflt utime stime
    if (sscanf (p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double) (utime + stime) / sysconf (_SC_CLK_TCK);
}

static double
s_cpu_self (void)
{
    struct rusage ru;
    getrusage (RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec
         + ru.ru_stime.tv_usec / 1e6;
}

static void
s_on_msg (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void) nc, (void) sub, (void) closure;
    uint64_t seq = 1;
    if (strcmp (s_mode, "republish") == 0) {
        const char *value = NULL;
        if (natsMsgHeader_Get (msg, "Nats-Sequence", &value) != NATS_OK)
            seq = 0;
        else
            seq = strtoull (value, NULL, 10);
        if (natsMsgHeader_Get (msg, "Nats-Last-Sequence", &value) != NATS_OK)
            seq = 0;
    }
    else
    if (strcmp (s_mode, "consumer") == 0) {
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData (&meta, msg) != NATS_OK)
            seq = 0;
        else {
            seq = meta->Sequence.Stream;
            jsMsgMetaData_Destroy (meta);
        }
    }
    if (seq == 0)
        atomic_fetch_add (&s_bad, 1);
    atomic_fetch_add (&s_received, 1);
    natsMsg_Destroy (msg);
}

int
main (int argc, char *argv [])
{
    if (argc != 5) {
        fprintf (stderr, "usage: %s PORT SERVER_PID core|stored|republish|consumer N\n", argv [0]);
        return 2;
    }
    char url [64];
    snprintf (url, sizeof url, "nats://127.0.0.1:%s", argv [1]);
    int server = atoi (argv [2]);
    s_mode = argv [3];
    long n = atol (argv [4]);
    natsConnection *sub_nc = NULL, *pub_nc = NULL;
    if (natsConnection_ConnectTo (&sub_nc, url) != NATS_OK
    ||  natsConnection_ConnectTo (&pub_nc, url) != NATS_OK) {
        fprintf (stderr, "cannot connect\n");
        return 1;
    }
    jsCtx *js = NULL;
    natsConnection_JetStream (&js, sub_nc, NULL);
    jsErrCode jerr = 0;
    js_DeleteStream (js, "BENCH", NULL, &jerr);
    natsSubscription *sub = NULL;
    natsStatus s = NATS_OK;
    if (strcmp (s_mode, "core")) {
        jsStreamConfig cfg;
        jsStreamConfig_Init (&cfg);
        const char *subjects [] = { "world.updates.>" };
        cfg.Name = "BENCH";
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.MaxMsgsPerSubject = 100;
        cfg.MaxAge = 300LL * 1000000000LL;
        cfg.Storage = js_MemoryStorage;
        cfg.AllowDirect = true;
        jsRePublish rp;
        jsRePublish_Init (&rp);
        rp.Source = ">";
        rp.Destination = "wsr.live.>";
        if (strcmp (s_mode, "republish") == 0)
            cfg.RePublish = &rp;
        s = js_AddStream (NULL, js, &cfg, NULL, &jerr);
        if (s != NATS_OK) {
            fprintf (stderr, "stream: %s %d\n", natsStatus_GetText (s), jerr);
            return 1;
        }
    }
    if (strcmp (s_mode, "core") == 0 || strcmp (s_mode, "stored") == 0)
        s = natsConnection_Subscribe (&sub, sub_nc, "world.updates.user.*", s_on_msg, NULL);
    else
    if (strcmp (s_mode, "republish") == 0)
        s = natsConnection_Subscribe (&sub, sub_nc, "wsr.live.world.updates.user.*", s_on_msg,
                                      NULL);
    else {
        jsSubOptions so;
        jsSubOptions_Init (&so);
        so.Stream = "BENCH";
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverNew;
        s = js_Subscribe (&sub, js, "world.updates.user.*", s_on_msg, NULL, NULL, &so, &jerr);
    }
    if (s != NATS_OK) {
        fprintf (stderr, "subscribe: %s\n", natsStatus_GetText (s));
        return 1;
    }
    natsSubscription_SetPendingLimits (sub, -1, -1);
    natsConnection_Flush (sub_nc);
    char payload [100];
    memset (payload, 'x', sizeof payload);
    double cpu_server = s_cpu_of (server), cpu_self = s_cpu_self (), start = s_now ();
    for (long i = 0; i < n; i++) {
        char subject [64];
        snprintf (subject, sizeof subject, "world.updates.user.u%ld", i % 1000);
        while (natsConnection_Publish (pub_nc, subject, payload, sizeof payload) != NATS_OK)
            nats_Sleep (1);
        if (i % 1000 == 999)
            //  Keep the publisher at most ~20k messages ahead of delivery
            while (i - atomic_load (&s_received) > 20000)
                nats_Sleep (1);
    }
    natsConnection_Flush (pub_nc);
    double deadline = s_now () + 60;
    while (atomic_load (&s_received) < n && s_now () < deadline)
        nats_Sleep (1);
    double elapsed = s_now () - start;
    cpu_server = s_cpu_of (server) - cpu_server;
    cpu_self = s_cpu_self () - cpu_self;
    long got = atomic_load (&s_received);
    printf ("%-10s %ld/%ld msgs (%ld without sequence) in %.2f s: %.0f msg/s; "
            "nats-server %.2f us/msg, client %.2f us/msg\n", s_mode, got, n,
            (long) atomic_load (&s_bad), elapsed, got / elapsed, cpu_server * 1e6 / got,
            cpu_self * 1e6 / got);
    natsSubscription_Destroy (sub);
    js_DeleteStream (js, "BENCH", NULL, &jerr);
    jsCtx_Destroy (js);
    natsConnection_Destroy (sub_nc);
    natsConnection_Destroy (pub_nc);
    nats_Close ();
    return 0;
}
