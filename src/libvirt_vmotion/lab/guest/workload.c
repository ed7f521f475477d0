/*
 * libvirt-vmotion guest workload: a self-verifying memory writer.
 *
 * Keeps a working set of wss_mib MiB (4 KiB pages) that it rewrites
 * round-robin at rate_mib_s MiB/s while continuously re-verifying every page.
 * A page's content is a pure function of (page index, generation); the
 * expected generation of every page is kept in an array. A page that comes
 * back stale after a live migration (a lost dirty page) no longer matches its
 * expected generation and is counted once, then repaired.
 *
 * Two checks catch stale pages:
 *   - the verifier, a rotating cursor that re-checks the whole working set
 *     every VERIFY_PERIOD_S seconds (header and body);
 *   - the writer, which checks a page's header before it overwrites it, so a
 *     stale page the writer reaches before the verifier is not silently erased.
 *
 * Modes: "paced" sleeps between 10 ms write bursts; "busy" never sleeps (it
 * spins between bursts, rate 0 = unlimited), so only it can be slowed down by
 * auto-converge's CPU throttling.
 *
 * Settings come from /proc/cmdline (vmotion.wss_mib=64 vmotion.rate_mib_s=20
 * vmotion.mode=paced) and can be changed at runtime over the control port.
 *
 * TCP 7000 (control): one command line per connection, one JSON line reply:
 *   status | set rate R | set wss N | set mode paced|busy | corrupt
 * TCP 7001 (stream): every 10 ms each client gets "<seq> <monotonic ms>\n".
 *
 * Disk log (only with vmotion.disk=/dev/vda on the command line): a second
 * thread appends numbered, checksummed 4 KiB records to the raw device with
 * O_DIRECT at vmotion.disk_kib_s KiB/s, in batches, each batch followed by
 * fdatasync(); a record is *acknowledged* once that fdatasync returned. The
 * log is a ring over the device: record seq lives in slot seq % slots. The
 * same thread re-reads every acknowledged slot continuously (O_DIRECT, so the
 * bytes come from the storage, not a cache) and checks magic, run id, seq,
 * checksum and the tail copy of seq: a lost, stale or torn acknowledged write
 * is counted in disk_mismatches. Commands: set disk_rate KIB_S, corrupt-disk.
 *
 * The memory checker and the sockets run in one poll() loop; the disk log in
 * its own thread (blocking I/O must not stall them). Build: gcc -O2 -static.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WORKLOAD_CONTROL_PORT 7000
#define WORKLOAD_STREAM_PORT 7001

#define PAGE_BYTES 4096u
#define PAGE_WORDS (PAGE_BYTES / 8u)
#define PAGES_PER_MIB 256u
#define PAGE_MAGIC 0x766d6f74696f6e21ull /* "vmotion!" */
#define BODY_MUL 0x9e3779b97f4a7c15ull

#define TICK_NS 10000000ll            /* 10 ms: write bursts and stream lines */
#define VERIFY_PERIOD_S 1.5           /* whole working set re-verified this often */
#define MAX_CREDIT_S 0.1              /* never catch up more than this much work */
#define BUSY_CHUNK_PAGES 32u          /* busy mode: pages between polls */
#define MAX_WSS_MIB 4096
#define MAX_RATE_MIB_S 100000

#define MAX_CTRL 16
#define MAX_STREAM 32
#define CTRL_BUF 256
#define CTRL_TIMEOUT_NS 5000000000ll
#define STREAM_BUF 4096

enum mode { MODE_PACED, MODE_BUSY };

struct ctrl_conn {
    int fd;
    size_t len;
    long long opened_ns;
    char buf[CTRL_BUF];
};

struct stream_conn {
    int fd;
    unsigned long long seq;
    size_t len;
    char buf[STREAM_BUF];
};

/* Settings. */
static unsigned wss_mib = 64;
static unsigned rate_mib_s = 20;
static enum mode mode = MODE_PACED;

/* Working set. */
static uint64_t *pages;            /* wss_pages * PAGE_WORDS words */
static uint32_t *expected;         /* expected generation per page */
static size_t wss_pages;
static size_t write_cursor;
static size_t verify_cursor;
static double write_credit;        /* pages allowed to write now */
static double verify_credit;       /* pages allowed to verify now */

/* Counters. */
static unsigned long long pages_written;
static unsigned long long pages_verified;
static unsigned long long verify_passes;
static unsigned long long mismatches;
static uint32_t max_generation;
static long long last_pass_start_ns;
static double last_verify_pass_s;

/* Achieved rate: pages_written sampled every 100 ms over the last ~1 s. */
#define RATE_SLOTS 11
static long long rate_t[RATE_SLOTS];
static unsigned long long rate_pw[RATE_SLOTS];
static unsigned rate_head;
static unsigned rate_count;

static long long start_ns;
static char boot_id[64] = "unknown";

static struct ctrl_conn ctrl[MAX_CTRL];
static struct stream_conn streams[MAX_STREAM];
static int ctrl_listen_fd = -1;
static int stream_listen_fd = -1;

static void logmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("workload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static const char *mode_name(enum mode m) { return m == MODE_BUSY ? "busy" : "paced"; }

static int parse_mode(const char *s, enum mode *out) {
    if (strcmp(s, "paced") == 0) { *out = MODE_PACED; return 0; }
    if (strcmp(s, "busy") == 0) { *out = MODE_BUSY; return 0; }
    return -1;
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out) {
    char *end;
    unsigned long v;
    if (*s < '0' || *s > '9') return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end != '\0' || v < lo || v > hi) return -1;
    *out = (unsigned)v;
    return 0;
}

/* ---- page content ------------------------------------------------------ */

static inline uint64_t body_seed(uint64_t index, uint64_t gen) {
    uint64_t x = (index << 32) ^ gen ^ PAGE_MAGIC;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static void fill_page(size_t index, uint32_t gen) {
    uint64_t *p = pages + index * PAGE_WORDS;
    uint64_t seed = body_seed(index, gen);
    p[0] = PAGE_MAGIC;
    p[1] = index;
    p[2] = gen;
    for (unsigned w = 3; w < PAGE_WORDS; w++) p[w] = seed + w * BODY_MUL;
}

static int header_ok(size_t index) {
    const uint64_t *p = pages + index * PAGE_WORDS;
    return p[0] == PAGE_MAGIC && p[1] == index && p[2] == expected[index];
}

static int page_ok(size_t index) {
    const uint64_t *p = pages + index * PAGE_WORDS;
    uint64_t seed = body_seed(index, expected[index]);
    uint64_t diff = 0;
    if (!header_ok(index)) return 0;
    for (unsigned w = 3; w < PAGE_WORDS; w++) diff |= p[w] ^ (seed + w * BODY_MUL);
    return diff == 0;
}

static void count_mismatch(size_t index, const char *who) {
    const uint64_t *p = pages + index * PAGE_WORDS;
    mismatches++;
    logmsg("MISMATCH (%s) page %zu: header magic=%llx index=%llu gen=%llu, expected gen %u; "
           "total %llu", who, index, (unsigned long long)p[0], (unsigned long long)p[1],
           (unsigned long long)p[2], expected[index], mismatches);
    fill_page(index, expected[index]); /* repair: count each stale page once */
}

static void write_one(void) {
    size_t i = write_cursor;
    if (!header_ok(i)) count_mismatch(i, "writer");
    expected[i]++;
    if (expected[i] > max_generation) max_generation = expected[i];
    fill_page(i, expected[i]);
    pages_written++;
    write_cursor = (i + 1 == wss_pages) ? 0 : i + 1;
}

static void verify_one(void) {
    size_t i = verify_cursor;
    if (!page_ok(i)) count_mismatch(i, "verifier");
    pages_verified++;
    verify_cursor = i + 1;
    if (verify_cursor == wss_pages) {
        long long now = mono_ns();
        verify_cursor = 0;
        verify_passes++;
        last_verify_pass_s = (double)(now - last_pass_start_ns) / 1e9;
        last_pass_start_ns = now;
    }
}

static int set_wss(unsigned mib) {
    size_t n = (size_t)mib * PAGES_PER_MIB;
    uint64_t *np = mmap(NULL, n * PAGE_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *ne;
    if (np == MAP_FAILED) return -1;
    ne = calloc(n, sizeof *ne);
    if (!ne) { munmap(np, n * PAGE_BYTES); return -1; }
    if (pages) munmap(pages, wss_pages * PAGE_BYTES);
    free(expected);
    pages = np;
    expected = ne;
    wss_pages = n;
    wss_mib = mib;
    write_cursor = verify_cursor = 0;
    write_credit = verify_credit = 0;
    max_generation = 1;
    for (size_t i = 0; i < n; i++) { expected[i] = 1; fill_page(i, 1); }
    last_pass_start_ns = mono_ns();
    return 0;
}

/* Rewind one page behind the checker's back: write it at gen+1 (updating the
 * expected array), then put the old bytes back, exactly as a lost dirty page
 * would look. The page just behind the write cursor is the one the writer will
 * reach last, so the verifier finds it first. */
static size_t corrupt_one(void) {
    static uint64_t saved[PAGE_WORDS];
    size_t i = (write_cursor + wss_pages - 1) % wss_pages;
    uint64_t *p = pages + i * PAGE_WORDS;
    memcpy(saved, p, PAGE_BYTES);
    expected[i]++;
    if (expected[i] > max_generation) max_generation = expected[i];
    fill_page(i, expected[i]);
    memcpy(p, saved, PAGE_BYTES);
    return i;
}

/* ---- achieved rate ------------------------------------------------------ */

static void rate_sample(long long now) {
    unsigned last = (rate_head + RATE_SLOTS - 1) % RATE_SLOTS;
    if (rate_count && now - rate_t[last] < 100000000ll) return;
    rate_t[rate_head] = now;
    rate_pw[rate_head] = pages_written;
    rate_head = (rate_head + 1) % RATE_SLOTS;
    if (rate_count < RATE_SLOTS) rate_count++;
}

static double achieved_mib_s(long long now) {
    unsigned oldest;
    double dt;
    if (rate_count == 0) return 0.0;
    oldest = (rate_head + RATE_SLOTS - rate_count) % RATE_SLOTS;
    dt = (double)(now - rate_t[oldest]) / 1e9;
    if (dt < 0.05) return 0.0;
    return (double)(pages_written - rate_pw[oldest]) / PAGES_PER_MIB / dt;
}

static void rate_reset(void) { rate_count = 0; rate_head = 0; }

/* ---- disk log (own thread) ---------------------------------------------------- */

#define DISK_REC_BYTES 4096u
#define DISK_REC_WORDS (DISK_REC_BYTES / 8u)
#define DISK_MAGIC 0x766d6f2d6469736bull /* "vmo-disk" */
#define DISK_BATCH_MAX 64u                /* records per pwrite + fdatasync */
#define DISK_VERIFY_REC_S 4096.0          /* re-read rate: 16 MiB/s */
#define DISK_VERIFY_CHUNK 64u
#define MAX_DISK_KIB_S 1048576

static char disk_path[64];
static unsigned disk_kib_s = 256;
static uint64_t disk_run_id;
static uint64_t disk_slots;
/* Shared with the main thread (status): read and written with __atomic. */
static unsigned long long disk_written;   /* records handed to pwrite */
static unsigned long long disk_acked;     /* records 0..disk_acked-1 are acknowledged */
static unsigned long long disk_verified;  /* slot checks done */
static unsigned long long disk_verify_passes;
static unsigned long long disk_mismatches;
static unsigned long long disk_io_errors;
static unsigned long long disk_corrupt_req;
static int disk_active;
static char disk_last_problem[160] = "";
static pthread_mutex_t disk_msg_lock = PTHREAD_MUTEX_INITIALIZER;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define INC(x) __atomic_add_fetch(&(x), 1, __ATOMIC_ACQ_REL)

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Record layout (64-bit words): 0 magic, 1 run id, 2 seq, 3 checksum of words
 * 4..511, 4..510 body = f(run, seq, word), 511 = seq again (a torn write that
 * kept the head but lost the tail, or the reverse, fails one of the checks). */
static uint64_t disk_checksum(const uint64_t *r) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned w = 4; w < DISK_REC_WORDS; w++) h = mix64(h ^ r[w]) + w;
    return h;
}

static void disk_fill(uint64_t *r, uint64_t seq) {
    uint64_t seed = mix64(disk_run_id ^ (seq * BODY_MUL));
    r[0] = DISK_MAGIC;
    r[1] = disk_run_id;
    r[2] = seq;
    for (unsigned w = 4; w < DISK_REC_WORDS - 1; w++) r[w] = seed + w * BODY_MUL;
    r[DISK_REC_WORDS - 1] = seq;
    r[3] = disk_checksum(r);
}

static void disk_problem(const char *fmt, ...) {
    va_list ap;
    char buf[160];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *c = buf; *c; c++) if (*c == '"' || *c == '\\' || *c < ' ') *c = ' ';
    pthread_mutex_lock(&disk_msg_lock);
    memcpy(disk_last_problem, buf, sizeof buf);
    pthread_mutex_unlock(&disk_msg_lock);
    logmsg("disk: %s", buf);
}

/* Expected seq in slot for a log whose records 0..acked-1 are acknowledged,
 * or -1 when the slot has not been written by this run yet. */
static long long disk_expected(uint64_t slot, unsigned long long acked) {
    unsigned long long seq;
    if (acked == 0 || slot >= disk_slots || slot > acked - 1) return -1;
    seq = (acked - 1) - ((acked - 1 - slot) % disk_slots);
    return (long long)seq;
}

static void disk_check(const uint64_t *r, uint64_t slot, unsigned long long seq) {
    const char *why = NULL;
    if (r[0] != DISK_MAGIC) why = "bad magic (lost write?)";
    else if (r[1] != disk_run_id) why = "other run id (stale record)";
    else if (r[2] != seq) why = "wrong seq (lost or stale write)";
    else if (r[DISK_REC_WORDS - 1] != seq) why = "tail seq differs (torn write)";
    else if (r[3] != disk_checksum(r)) why = "checksum differs (torn or corrupt)";
    if (!why) return;
    INC(disk_mismatches);
    disk_problem("MISMATCH slot %llu: expected seq %llu, found seq %llu: %s; total %llu",
                 (unsigned long long)slot, seq, (unsigned long long)r[2], why,
                 LOAD(disk_mismatches));
}

static void *disk_thread(void *arg) {
    int fd = *(int *)arg;
    uint64_t *buf;
    unsigned long long seq = 0, verify_slot = 0;
    double write_credit = 0, verify_credit = 0;
    long long last = mono_ns();
    if (posix_memalign((void **)&buf, 4096, DISK_BATCH_MAX * DISK_REC_BYTES)) return NULL;
    for (;;) {
        long long now = mono_ns();
        double dt = (double)(now - last) / 1e9;
        double rate = (double)LOAD(disk_kib_s) / 4.0; /* records per second */
        unsigned n;
        last = now;
        if (dt > 1.0) dt = 0.01; /* paused VM: do not burst */
        write_credit += rate * dt;
        if (write_credit > DISK_BATCH_MAX) write_credit = DISK_BATCH_MAX;
        n = (unsigned)write_credit;
        if (n > 0) {
            uint64_t slot = seq % disk_slots;
            ssize_t got;
            if (slot + n > disk_slots) n = (unsigned)(disk_slots - slot); /* no wrap in one write */
            for (unsigned i = 0; i < n; i++) disk_fill(buf + i * DISK_REC_WORDS, seq + i);
            STORE(disk_written, seq + n);
            got = pwrite(fd, buf, (size_t)n * DISK_REC_BYTES, (off_t)(slot * DISK_REC_BYTES));
            if (got != (ssize_t)(n * DISK_REC_BYTES) || fdatasync(fd) != 0) {
                INC(disk_io_errors);
                disk_problem("write/fdatasync of seq %llu..%llu failed: %s", seq, seq + n - 1,
                             got < 0 ? strerror(errno) : "short write or flush error");
                STORE(disk_written, seq); /* not acknowledged: written again */
                usleep(100000);
            } else {
                seq += n;
                STORE(disk_acked, seq); /* acknowledged: the flush returned */
                write_credit -= n;
            }
        }
        if (LOAD(disk_corrupt_req)) { /* test-only: prove the checker sees a bad record */
            unsigned long long acked = LOAD(disk_acked);
            STORE(disk_corrupt_req, 0ull);
            if (acked > 0) {
                uint64_t slot = (acked - 1) % disk_slots;
                disk_fill(buf, acked - 1);
                buf[100] ^= 1; /* one bit in the body: checksum must catch it */
                if (pwrite(fd, buf, DISK_REC_BYTES, (off_t)(slot * DISK_REC_BYTES)) > 0)
                    fdatasync(fd);
                logmsg("disk: corrupted slot %llu", (unsigned long long)slot);
            }
        }
        verify_credit += DISK_VERIFY_REC_S * dt;
        if (verify_credit > DISK_VERIFY_CHUNK) verify_credit = DISK_VERIFY_CHUNK;
        if (verify_credit >= DISK_VERIFY_CHUNK) {
            unsigned long long acked = LOAD(disk_acked);
            uint64_t span = acked < disk_slots ? acked : disk_slots;
            if (span > 0) {
                unsigned m = DISK_VERIFY_CHUNK;
                ssize_t got;
                if (verify_slot >= span) verify_slot = 0;
                if (verify_slot + m > span) m = (unsigned)(span - verify_slot);
                got = pread(fd, buf, (size_t)m * DISK_REC_BYTES,
                            (off_t)(verify_slot * DISK_REC_BYTES));
                if (got != (ssize_t)(m * DISK_REC_BYTES)) {
                    INC(disk_io_errors);
                    disk_problem("read of slot %llu failed: %s", verify_slot,
                                 got < 0 ? strerror(errno) : "short read");
                } else {
                    for (unsigned i = 0; i < m; i++) {
                        long long want = disk_expected(verify_slot + i, acked);
                        if (want >= 0) disk_check(buf + i * DISK_REC_WORDS, verify_slot + i,
                                                  (unsigned long long)want);
                    }
                    __atomic_add_fetch(&disk_verified, m, __ATOMIC_ACQ_REL);
                    verify_slot += m;
                    if (verify_slot >= span) { verify_slot = 0; INC(disk_verify_passes); }
                }
            }
            verify_credit = 0;
        }
        usleep(10000);
    }
    return NULL;
}

static void disk_start(void) {
    static int fd;
    pthread_t tid;
    off_t size;
    FILE *f;
    if (!disk_path[0]) return;
    fd = open(disk_path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0) { disk_problem("cannot open %s: %s", disk_path, strerror(errno)); return; }
    size = lseek(fd, 0, SEEK_END);
    if (size < (off_t)DISK_REC_BYTES) { disk_problem("%s too small", disk_path); return; }
    disk_slots = (uint64_t)size / DISK_REC_BYTES;
    f = fopen("/dev/urandom", "r");
    if (!f || fread(&disk_run_id, sizeof disk_run_id, 1, f) != 1) disk_run_id = (uint64_t)mono_ns();
    if (f) fclose(f);
    if (pthread_create(&tid, NULL, disk_thread, &fd)) { disk_problem("no thread"); return; }
    STORE(disk_active, 1);
    logmsg("disk log on %s: %llu slots of 4 KiB, %u KiB/s", disk_path,
           (unsigned long long)disk_slots, disk_kib_s);
}

static int format_disk_status(char *out, size_t cap) {
    char problem[160];
    pthread_mutex_lock(&disk_msg_lock);
    memcpy(problem, disk_last_problem, sizeof problem);
    pthread_mutex_unlock(&disk_msg_lock);
    return snprintf(out, cap,
        "\"disk\": \"%s\", \"disk_active\": %s, \"disk_kib_s\": %u, \"disk_slots\": %llu, "
        "\"disk_run_id\": \"%016llx\", \"disk_records\": %llu, \"disk_acked\": %llu, "
        "\"disk_verified\": %llu, \"disk_verify_passes\": %llu, \"disk_mismatches\": %llu, "
        "\"disk_io_errors\": %llu, \"disk_last_problem\": \"%s\"",
        disk_path, LOAD(disk_active) ? "true" : "false", LOAD(disk_kib_s),
        (unsigned long long)disk_slots, (unsigned long long)disk_run_id, LOAD(disk_written),
        LOAD(disk_acked), LOAD(disk_verified), LOAD(disk_verify_passes), LOAD(disk_mismatches),
        LOAD(disk_io_errors), problem);
}

/* ---- JSON replies -------------------------------------------------------- */

static double read_uptime_s(void) {
    double up = -1.0;
    FILE *f = fopen("/proc/uptime", "r");
    if (f) {
        if (fscanf(f, "%lf", &up) != 1) up = -1.0;
        fclose(f);
    }
    return up;
}

static int format_status_memory(char *out, size_t cap, long long now);

static int format_status(char *out, size_t cap) {
    long long now = mono_ns();
    int n = format_status_memory(out, cap, now);
    if (n < 2 || (size_t)n >= cap) return n;
    n -= 2; /* drop "}\n" and append the disk log's fields */
    n += snprintf(out + n, cap - (size_t)n, ", ");
    n += format_disk_status(out + n, cap - (size_t)n);
    n += snprintf(out + n, cap - (size_t)n, "}\n");
    return n;
}

static int format_status_memory(char *out, size_t cap, long long now) {
    return snprintf(out, cap,
        "{\"boot_id\": \"%s\", \"uptime_s\": %.2f, \"workload_uptime_s\": %.3f, "
        "\"wss_mib\": %u, \"rate_mib_s\": %u, \"mode\": \"%s\", \"achieved_mib_s\": %.2f, "
        "\"pages_written\": %llu, \"pages_verified\": %llu, \"verify_passes\": %llu, "
        "\"mismatches\": %llu, \"max_generation\": %u, \"last_verify_pass_s\": %.3f}\n",
        boot_id, read_uptime_s(), (double)(now - start_ns) / 1e9, wss_mib, rate_mib_s,
        mode_name(mode), achieved_mib_s(now), pages_written, pages_verified, verify_passes,
        mismatches, max_generation, last_verify_pass_s);
}

static int format_error(char *out, size_t cap, const char *msg) {
    return snprintf(out, cap, "{\"error\": \"%s\"}\n", msg);
}

static void handle_command(char *line, char *out, size_t cap) {
    char *argv[4];
    int argc = 0;
    char *save = NULL;
    unsigned v;
    enum mode m;
    for (char *tok = strtok_r(line, " \t\r\n", &save); tok && argc < 4;
         tok = strtok_r(NULL, " \t\r\n", &save))
        argv[argc++] = tok;
    if (argc == 1 && strcmp(argv[0], "status") == 0) {
        format_status(out, cap);
    } else if (argc == 1 && strcmp(argv[0], "corrupt") == 0) {
        size_t i = corrupt_one();
        logmsg("corrupt: rewound page %zu", i);
        snprintf(out, cap, "{\"corrupted_page\": %zu}\n", i);
    } else if (argc == 3 && strcmp(argv[0], "set") == 0 && strcmp(argv[1], "rate") == 0) {
        if (parse_uint(argv[2], 0, MAX_RATE_MIB_S, &v)) {
            format_error(out, cap, "rate must be an integer MiB/s in 0..100000");
            return;
        }
        rate_mib_s = v;
        write_credit = 0;
        rate_reset();
        logmsg("rate set to %u MiB/s", v);
        format_status(out, cap);
    } else if (argc == 3 && strcmp(argv[0], "set") == 0 && strcmp(argv[1], "wss") == 0) {
        if (parse_uint(argv[2], 1, MAX_WSS_MIB, &v)) {
            format_error(out, cap, "wss must be an integer MiB in 1..4096");
            return;
        }
        if (set_wss(v)) {
            format_error(out, cap, "cannot allocate the working set (guest memory too small?)");
            return;
        }
        rate_reset();
        logmsg("working set set to %u MiB", v);
        format_status(out, cap);
    } else if (argc == 1 && strcmp(argv[0], "corrupt-disk") == 0) {
        if (!LOAD(disk_active)) { format_error(out, cap, "no disk log (boot with --disk)"); return; }
        STORE(disk_corrupt_req, 1ull);
        snprintf(out, cap, "{\"corrupt_disk\": \"requested\"}\n");
    } else if (argc == 3 && strcmp(argv[0], "set") == 0 && strcmp(argv[1], "disk_rate") == 0) {
        if (parse_uint(argv[2], 0, MAX_DISK_KIB_S, &v)) {
            format_error(out, cap, "disk_rate must be an integer KiB/s in 0..1048576");
            return;
        }
        STORE(disk_kib_s, v);
        logmsg("disk rate set to %u KiB/s", v);
        format_status(out, cap);
    } else if (argc == 3 && strcmp(argv[0], "set") == 0 && strcmp(argv[1], "mode") == 0) {
        if (parse_mode(argv[2], &m)) {
            format_error(out, cap, "mode must be paced or busy");
            return;
        }
        mode = m;
        write_credit = 0;
        rate_reset();
        logmsg("mode set to %s", mode_name(m));
        format_status(out, cap);
    } else {
        format_error(out, cap,
                     "unknown command; use status, set rate R, set wss N, "
                     "set mode paced|busy, set disk_rate K, corrupt, corrupt-disk");
    }
}

/* ---- sockets ---------------------------------------------------------------- */

static int listen_on(int port) {
    struct sockaddr_in sa;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 16)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all_and_close(int fd, const char *buf, size_t len) {
    /* Replies are small (< 1 KiB): they fit the fresh socket's send buffer. */
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) break;
        buf += n;
        len -= (size_t)n;
    }
    close(fd);
}

static void accept_ctrl(long long now) {
    for (;;) {
        int fd = accept4(ctrl_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int slot = -1;
        if (fd < 0) return;
        for (int i = 0; i < MAX_CTRL; i++)
            if (ctrl[i].fd < 0) { slot = i; break; }
        if (slot < 0) {
            static const char busy_msg[] = "{\"error\": \"too many control connections\"}\n";
            send_all_and_close(fd, busy_msg, sizeof busy_msg - 1);
            continue;
        }
        ctrl[slot].fd = fd;
        ctrl[slot].len = 0;
        ctrl[slot].opened_ns = now;
    }
}

static void read_ctrl(struct ctrl_conn *c) {
    char reply[2048];
    char *nl;
    ssize_t n = recv(c->fd, c->buf + c->len, CTRL_BUF - 1 - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n > 0) c->len += (size_t)n;
    c->buf[c->len] = '\0';
    nl = memchr(c->buf, '\n', c->len);
    if (!nl && n > 0 && c->len < CTRL_BUF - 1) return; /* wait for the rest */
    if (nl) *nl = '\0';
    if (c->len == 0) { close(c->fd); c->fd = -1; return; }
    if (!nl && c->len >= CTRL_BUF - 1) format_error(reply, sizeof reply, "command too long");
    else handle_command(c->buf, reply, sizeof reply);
    send_all_and_close(c->fd, reply, strlen(reply));
    c->fd = -1;
}

static void accept_stream(void) {
    for (;;) {
        int one = 1;
        int slot = -1;
        int fd = accept4(stream_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        for (int i = 0; i < MAX_STREAM; i++)
            if (streams[i].fd < 0) { slot = i; break; }
        if (slot < 0) { close(fd); continue; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        streams[slot].fd = fd;
        streams[slot].seq = 0;
        streams[slot].len = 0;
        logmsg("stream client connected (slot %d)", slot);
    }
}

static void drop_stream(struct stream_conn *s, const char *why) {
    logmsg("stream client dropped: %s", why);
    close(s->fd);
    s->fd = -1;
}

static void flush_stream(struct stream_conn *s) {
    while (s->len > 0) {
        ssize_t n = send(s->fd, s->buf, s->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            drop_stream(s, strerror(errno));
            return;
        }
        memmove(s->buf, s->buf + n, s->len - (size_t)n);
        s->len -= (size_t)n;
    }
}

static void stream_tick(long long now) {
    char line[64];
    for (int i = 0; i < MAX_STREAM; i++) {
        struct stream_conn *s = &streams[i];
        int n;
        if (s->fd < 0) continue;
        n = snprintf(line, sizeof line, "%llu %lld\n", s->seq, now / 1000000ll);
        s->seq++; /* a line that does not fit is skipped; the seq gap shows it */
        if (s->len + (size_t)n <= STREAM_BUF) {
            memcpy(s->buf + s->len, line, (size_t)n);
            s->len += (size_t)n;
        }
        flush_stream(s);
    }
}

static void poll_sockets(int timeout_ms, long long now) {
    struct pollfd pfd[2 + MAX_CTRL + MAX_STREAM];
    int idx[2 + MAX_CTRL + MAX_STREAM];
    int n = 0;
    pfd[n].fd = ctrl_listen_fd; pfd[n].events = POLLIN; idx[n++] = -1;
    pfd[n].fd = stream_listen_fd; pfd[n].events = POLLIN; idx[n++] = -2;
    for (int i = 0; i < MAX_CTRL; i++) {
        if (ctrl[i].fd < 0) continue;
        if (now - ctrl[i].opened_ns > CTRL_TIMEOUT_NS) { close(ctrl[i].fd); ctrl[i].fd = -1; continue; }
        pfd[n].fd = ctrl[i].fd; pfd[n].events = POLLIN; idx[n++] = i;
    }
    for (int i = 0; i < MAX_STREAM; i++) {
        if (streams[i].fd < 0) continue;
        /* Readable on a stream socket means the client closed (or sent junk). */
        pfd[n].fd = streams[i].fd;
        pfd[n].events = POLLIN | (streams[i].len ? POLLOUT : 0);
        idx[n++] = 1000 + i;
    }
    if (poll(pfd, (nfds_t)n, timeout_ms) <= 0) return;
    for (int k = 0; k < n; k++) {
        if (!pfd[k].revents) continue;
        if (idx[k] == -1) accept_ctrl(now);
        else if (idx[k] == -2) accept_stream();
        else if (idx[k] < 1000) read_ctrl(&ctrl[idx[k]]);
        else {
            struct stream_conn *s = &streams[idx[k] - 1000];
            if (pfd[k].revents & (POLLERR | POLLHUP)) { drop_stream(s, "hangup"); continue; }
            if (pfd[k].revents & POLLIN) {
                char junk[256];
                ssize_t r = recv(s->fd, junk, sizeof junk, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    drop_stream(s, r == 0 ? "closed by client" : strerror(errno));
                    continue;
                }
            }
            if (pfd[k].revents & POLLOUT) flush_stream(s);
        }
    }
}

/* ---- settings from the kernel command line ---------------------------------- */

static void read_cmdline(void) {
    char buf[4096];
    char *save = NULL;
    unsigned v;
    enum mode m;
    FILE *f = fopen("/proc/cmdline", "r");
    size_t n;
    if (!f) { logmsg("cannot read /proc/cmdline; using defaults"); return; }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (char *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(tok, "vmotion.wss_mib=", 16) == 0) {
            if (parse_uint(tok + 16, 1, MAX_WSS_MIB, &v) == 0) wss_mib = v;
            else logmsg("ignoring bad %s", tok);
        } else if (strncmp(tok, "vmotion.rate_mib_s=", 19) == 0) {
            if (parse_uint(tok + 19, 0, MAX_RATE_MIB_S, &v) == 0) rate_mib_s = v;
            else logmsg("ignoring bad %s", tok);
        } else if (strncmp(tok, "vmotion.disk=", 13) == 0) {
            snprintf(disk_path, sizeof disk_path, "%s", tok + 13);
        } else if (strncmp(tok, "vmotion.disk_kib_s=", 19) == 0) {
            if (parse_uint(tok + 19, 0, MAX_DISK_KIB_S, &v) == 0) disk_kib_s = v;
            else logmsg("ignoring bad %s", tok);
        } else if (strncmp(tok, "vmotion.mode=", 13) == 0) {
            if (parse_mode(tok + 13, &m) == 0) mode = m;
            else logmsg("ignoring bad %s", tok);
        }
    }
}

static void read_boot_id(void) {
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    if (fgets(boot_id, sizeof boot_id, f)) boot_id[strcspn(boot_id, "\r\n\"\\")] = '\0';
    fclose(f);
}

/* ---- main loop -------------------------------------------------------------- */

static void do_work(double dt_s) {
    double rate_pages = (double)rate_mib_s * PAGES_PER_MIB;
    double verify_pages = (double)wss_pages / VERIFY_PERIOD_S;
    if (mode == MODE_BUSY && rate_mib_s == 0) {
        write_credit = BUSY_CHUNK_PAGES;
    } else {
        write_credit += rate_pages * dt_s;
        if (write_credit > rate_pages * MAX_CREDIT_S + 1) write_credit = rate_pages * MAX_CREDIT_S + 1;
    }
    verify_credit += verify_pages * dt_s;
    if (verify_credit > verify_pages * MAX_CREDIT_S + 1) verify_credit = verify_pages * MAX_CREDIT_S + 1;
    while (write_credit >= 1.0) { write_one(); write_credit -= 1.0; }
    while (verify_credit >= 1.0) { verify_one(); verify_credit -= 1.0; }
}

int main(void) {
    long long last_ns, next_tick;
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stderr, NULL, _IOLBF, 0);
    start_ns = mono_ns();
    read_boot_id();
    read_cmdline();
    for (int i = 0; i < MAX_CTRL; i++) ctrl[i].fd = -1;
    for (int i = 0; i < MAX_STREAM; i++) streams[i].fd = -1;
    ctrl_listen_fd = listen_on(WORKLOAD_CONTROL_PORT);
    stream_listen_fd = listen_on(WORKLOAD_STREAM_PORT);
    if (ctrl_listen_fd < 0 || stream_listen_fd < 0) {
        logmsg("cannot listen on ports %d/%d: %s", WORKLOAD_CONTROL_PORT, WORKLOAD_STREAM_PORT,
               strerror(errno));
        return 1;
    }
    if (set_wss(wss_mib)) {
        logmsg("cannot allocate %u MiB; falling back to 16 MiB", wss_mib);
        if (set_wss(16)) return 1;
    }
    disk_start();
    logmsg("ready: wss %u MiB, rate %u MiB/s, mode %s, init %.2f s", wss_mib, rate_mib_s,
           mode_name(mode), (double)(mono_ns() - start_ns) / 1e9);
    last_ns = mono_ns();
    next_tick = last_ns + TICK_NS;
    for (;;) {
        long long now = mono_ns();
        double dt = (double)(now - last_ns) / 1e9;
        last_ns = now;
        if (now >= next_tick) {
            stream_tick(now);
            /* After a long stall (e.g. a paused or migrating VM) restart the
             * schedule instead of bursting to catch up. */
            next_tick = (now - next_tick > 10 * TICK_NS) ? now + TICK_NS : next_tick + TICK_NS;
        }
        rate_sample(now);
        do_work(dt);
        if (mode == MODE_PACED) {
            long long wait_ns = next_tick - mono_ns();
            int timeout_ms = wait_ns > 0 ? (int)((wait_ns + 999999) / 1000000) : 0;
            poll_sockets(timeout_ms, mono_ns());
        } else {
            poll_sockets(0, now); /* busy: never sleep */
        }
    }
}
