/* Small helpers shared by the load generator (wsbench.c) and the calibration
 * server (wsblast.c): growable byte buffers, clocks, a log-linear latency
 * histogram, /proc readers. Header-only on purpose: two tiny programs. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *p;
    size_t len; /* bytes used */
    size_t off; /* bytes already consumed (out buffers) */
    size_t cap;
} buf_t;

__attribute__((unused)) static void die(const char *msg) {
    perror(msg);
    exit(2);
}

__attribute__((unused)) static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    if (b->off > 0 && b->off == b->len) { b->off = b->len = 0; }
    if (b->off > 0 && b->len + extra - b->off <= b->cap) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) die("realloc");
    b->p = p;
    b->cap = cap;
}

__attribute__((unused)) static void buf_append(buf_t *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

__attribute__((unused)) static void buf_free(buf_t *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static inline size_t buf_pending(const buf_t *b) { return b->len - b->off; }

static inline uint64_t now_us(void) { /* wall clock: timestamps travel in messages */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((unused)) static double self_cpu_s(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double u = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    if (user) *user = u;
    if (sys) *sys = s;
    return u + s;
}

__attribute__((unused)) static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* --- latency histogram: log-linear, 64 sub-buckets per power of two (<1.6% error) --- */
#define H_SUB 64
#define H_EXP_MAX 44
#define H_BUCKETS (2 * H_SUB + (H_EXP_MAX - 7) * H_SUB)

typedef struct {
    uint64_t counts[H_BUCKETS];
    uint64_t n, max;
    double sum;
} hist_t;

static inline int h_index(uint64_t v) {
    if (v < 2 * H_SUB) return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 7 */
    if (e > H_EXP_MAX) { e = H_EXP_MAX; v = (1ull << (H_EXP_MAX + 1)) - 1; }
    int m = (int)(v >> (e - 6)); /* 64..127 */
    return 2 * H_SUB + (e - 7) * H_SUB + (m - H_SUB);
}

static inline uint64_t h_upper(int i) { /* highest value of bucket i */
    if (i < 2 * H_SUB) return (uint64_t)i;
    int e = (i - 2 * H_SUB) / H_SUB + 7;
    uint64_t m = (uint64_t)((i - 2 * H_SUB) % H_SUB + H_SUB);
    return ((m + 1) << (e - 6)) - 1;
}

static inline void h_record(hist_t *h, uint64_t v) {
    h->counts[h_index(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

__attribute__((unused)) static uint64_t h_percentile(const hist_t *h, double q) {
    if (h->n == 0) return 0;
    uint64_t want = (uint64_t)(q * (double)h->n);
    if (want < 1) want = 1;
    if (want > h->n) want = h->n;
    uint64_t seen = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t u = h_upper(i);
            return u > h->max ? h->max : u;
        }
    }
    return h->max;
}

/* --- /proc: CPU seconds (utime+stime) and memory of other processes --- */
typedef struct {
    double cpu_s;
    long rss_kb, hwm_kb;
    int alive;
} procstat_t;

__attribute__((unused)) static void proc_read(int pid, procstat_t *ps) {
    char path[64], buf[4096];
    ps->cpu_s = 0;
    ps->rss_kb = ps->hwm_kb = 0;
    ps->alive = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return;
    /* after ") ": field 3 is state; utime is field 14, stime 15 */
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return;
    long hz = sysconf(_SC_CLK_TCK);
    ps->cpu_s = (double)(ut + st) / (double)hz;
    ps->alive = 1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (!f) return;
    while (fgets(buf, sizeof buf, f)) {
        if (!strncmp(buf, "VmRSS:", 6)) ps->rss_kb = atol(buf + 6);
        else if (!strncmp(buf, "VmHWM:", 6)) ps->hwm_kb = atol(buf + 6);
    }
    fclose(f);
}

/* Sum over several processes (a server with workers). */
__attribute__((unused)) static void procs_read(const int *pids, int n, procstat_t *sum) {
    memset(sum, 0, sizeof *sum);
    for (int i = 0; i < n; i++) {
        procstat_t one;
        proc_read(pids[i], &one);
        sum->cpu_s += one.cpu_s;
        sum->rss_kb += one.rss_kb;
        sum->hwm_kb += one.hwm_kb;
        sum->alive += one.alive;
    }
}

/* --- /proc/stat: per-core time split, to see who else used the cores --- */
#define MAX_CPUS 8
typedef struct {
    int n;
    unsigned long long v[MAX_CPUS][8]; /* user nice system idle iowait irq softirq steal */
} cpustat_t;

__attribute__((unused)) static void cpustat_read(cpustat_t *cs) {
    memset(cs, 0, sizeof *cs);
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int cpu;
        unsigned long long *v;
        if (strncmp(line, "cpu", 3) || line[3] < '0' || line[3] > '9') continue;
        cpu = atoi(line + 3);
        if (cpu >= MAX_CPUS) continue;
        v = cs->v[cpu];
        sscanf(line + 3, "%*d %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7]);
        if (cpu + 1 > cs->n) cs->n = cpu + 1;
    }
    fclose(f);
}

/* JSON: per core, percent of the interval in each state */
__attribute__((unused)) static void cpustat_print(FILE *f, const cpustat_t *a, const cpustat_t *b) {
    static const char *names[8] = {"user", "nice", "sys", "idle", "iowait", "irq", "softirq", "steal"};
    fprintf(f, "[");
    for (int c = 0; c < b->n; c++) {
        unsigned long long tot = 0, d[8];
        for (int i = 0; i < 8; i++) { d[i] = b->v[c][i] - a->v[c][i]; tot += d[i]; }
        fprintf(f, "%s{", c ? "," : "");
        for (int i = 0; i < 8; i++)
            fprintf(f, "%s\"%s\":%.1f", i ? "," : "", names[i], tot ? 100.0 * (double)d[i] / (double)tot : 0.0);
        fprintf(f, ",\"busy\":%.1f}", tot ? 100.0 * (double)(tot - d[3] - d[4]) / (double)tot : 0.0);
    }
    fprintf(f, "]");
}

/* xorshift for WebSocket mask keys */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint32_t rnd32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

#endif
