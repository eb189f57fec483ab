/* MD5 for the ketama hash ring, written for tiercache (RFC 1321).
 *
 * Why here and not hashlib: the ring hashes every key it routes, and a call into hashlib
 * costs far more than the hash itself. Two entry points:
 *   tc_md5_words  one message of any length -> the four little-endian state words
 *   tc_md5_a      one message -> word A only (the ketama routing hash), a little cheaper
 *   tc_md5_x8     eight messages of <= 55 bytes (one block each) -> word A of each, computed
 *                 in lock-step with GCC/Clang vector extensions, so batch routing
 *                 (get_node_many) runs several hashes per instruction.
 * Word r of the result equals uhashring's ketama `hashi(key, replica=r)`.
 */
#ifndef TC_MD5_H
#define TC_MD5_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TC_MD5_ONE_BLOCK_MAX 55

/* Each round function split into the part that does not depend on the newest word x
 * (added early, off the critical path) and the part that does (added last). */
#define TC_F_EARLY(x, y, z) 0
#define TC_F_LATE(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define TC_G_EARLY(x, y, z) ((y) & ~(z))
#define TC_G_LATE(x, y, z) ((x) & (z))
#define TC_H_EARLY(x, y, z) 0
#define TC_H_LATE(x, y, z) ((x) ^ (y) ^ (z))
#define TC_I_EARLY(x, y, z) 0
#define TC_I_LATE(x, y, z) ((y) ^ ((x) | ~(z)))
#define TC_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define TC_STEP(f, a, b, c, d, x, t, s) \
    (a) += (x) + (uint32_t)(t) + f##_EARLY((b), (c), (d)); \
    (a) += f##_LATE((b), (c), (d)); \
    (a) = TC_ROTL((a), s); \
    (a) += (b);

/* The first 61 of the 64 steps of one compression, generic over the word type (scalar or
 * vector); step 61 is the last to write a. */
#define TC_MD5_ROUNDS_TO_A(a, b, c, d, M) \
    TC_STEP(TC_F, a, b, c, d, M[0], 0xd76aa478, 7)  TC_STEP(TC_F, d, a, b, c, M[1], 0xe8c7b756, 12) \
    TC_STEP(TC_F, c, d, a, b, M[2], 0x242070db, 17) TC_STEP(TC_F, b, c, d, a, M[3], 0xc1bdceee, 22) \
    TC_STEP(TC_F, a, b, c, d, M[4], 0xf57c0faf, 7)  TC_STEP(TC_F, d, a, b, c, M[5], 0x4787c62a, 12) \
    TC_STEP(TC_F, c, d, a, b, M[6], 0xa8304613, 17) TC_STEP(TC_F, b, c, d, a, M[7], 0xfd469501, 22) \
    TC_STEP(TC_F, a, b, c, d, M[8], 0x698098d8, 7)  TC_STEP(TC_F, d, a, b, c, M[9], 0x8b44f7af, 12) \
    TC_STEP(TC_F, c, d, a, b, M[10], 0xffff5bb1, 17) TC_STEP(TC_F, b, c, d, a, M[11], 0x895cd7be, 22) \
    TC_STEP(TC_F, a, b, c, d, M[12], 0x6b901122, 7)  TC_STEP(TC_F, d, a, b, c, M[13], 0xfd987193, 12) \
    TC_STEP(TC_F, c, d, a, b, M[14], 0xa679438e, 17) TC_STEP(TC_F, b, c, d, a, M[15], 0x49b40821, 22) \
    TC_STEP(TC_G, a, b, c, d, M[1], 0xf61e2562, 5)   TC_STEP(TC_G, d, a, b, c, M[6], 0xc040b340, 9) \
    TC_STEP(TC_G, c, d, a, b, M[11], 0x265e5a51, 14) TC_STEP(TC_G, b, c, d, a, M[0], 0xe9b6c7aa, 20) \
    TC_STEP(TC_G, a, b, c, d, M[5], 0xd62f105d, 5)   TC_STEP(TC_G, d, a, b, c, M[10], 0x02441453, 9) \
    TC_STEP(TC_G, c, d, a, b, M[15], 0xd8a1e681, 14) TC_STEP(TC_G, b, c, d, a, M[4], 0xe7d3fbc8, 20) \
    TC_STEP(TC_G, a, b, c, d, M[9], 0x21e1cde6, 5)   TC_STEP(TC_G, d, a, b, c, M[14], 0xc33707d6, 9) \
    TC_STEP(TC_G, c, d, a, b, M[3], 0xf4d50d87, 14)  TC_STEP(TC_G, b, c, d, a, M[8], 0x455a14ed, 20) \
    TC_STEP(TC_G, a, b, c, d, M[13], 0xa9e3e905, 5)  TC_STEP(TC_G, d, a, b, c, M[2], 0xfcefa3f8, 9) \
    TC_STEP(TC_G, c, d, a, b, M[7], 0x676f02d9, 14)  TC_STEP(TC_G, b, c, d, a, M[12], 0x8d2a4c8a, 20) \
    TC_STEP(TC_H, a, b, c, d, M[5], 0xfffa3942, 4)   TC_STEP(TC_H, d, a, b, c, M[8], 0x8771f681, 11) \
    TC_STEP(TC_H, c, d, a, b, M[11], 0x6d9d6122, 16) TC_STEP(TC_H, b, c, d, a, M[14], 0xfde5380c, 23) \
    TC_STEP(TC_H, a, b, c, d, M[1], 0xa4beea44, 4)   TC_STEP(TC_H, d, a, b, c, M[4], 0x4bdecfa9, 11) \
    TC_STEP(TC_H, c, d, a, b, M[7], 0xf6bb4b60, 16)  TC_STEP(TC_H, b, c, d, a, M[10], 0xbebfbc70, 23) \
    TC_STEP(TC_H, a, b, c, d, M[13], 0x289b7ec6, 4)  TC_STEP(TC_H, d, a, b, c, M[0], 0xeaa127fa, 11) \
    TC_STEP(TC_H, c, d, a, b, M[3], 0xd4ef3085, 16)  TC_STEP(TC_H, b, c, d, a, M[6], 0x04881d05, 23) \
    TC_STEP(TC_H, a, b, c, d, M[9], 0xd9d4d039, 4)   TC_STEP(TC_H, d, a, b, c, M[12], 0xe6db99e5, 11) \
    TC_STEP(TC_H, c, d, a, b, M[15], 0x1fa27cf8, 16) TC_STEP(TC_H, b, c, d, a, M[2], 0xc4ac5665, 23) \
    TC_STEP(TC_I, a, b, c, d, M[0], 0xf4292244, 6)   TC_STEP(TC_I, d, a, b, c, M[7], 0x432aff97, 10) \
    TC_STEP(TC_I, c, d, a, b, M[14], 0xab9423a7, 15) TC_STEP(TC_I, b, c, d, a, M[5], 0xfc93a039, 21) \
    TC_STEP(TC_I, a, b, c, d, M[12], 0x655b59c3, 6)  TC_STEP(TC_I, d, a, b, c, M[3], 0x8f0ccc92, 10) \
    TC_STEP(TC_I, c, d, a, b, M[10], 0xffeff47d, 15) TC_STEP(TC_I, b, c, d, a, M[1], 0x85845dd1, 21) \
    TC_STEP(TC_I, a, b, c, d, M[8], 0x6fa87e4f, 6)   TC_STEP(TC_I, d, a, b, c, M[15], 0xfe2ce6e0, 10) \
    TC_STEP(TC_I, c, d, a, b, M[6], 0xa3014314, 15)  TC_STEP(TC_I, b, c, d, a, M[13], 0x4e0811a1, 21) \
    TC_STEP(TC_I, a, b, c, d, M[4], 0xf7537e82, 6)

/* The last three steps only change d, c and b: routing (word A) can skip them. */
#define TC_MD5_LAST3(a, b, c, d, M) \
    TC_STEP(TC_I, d, a, b, c, M[11], 0xbd3af235, 10) \
    TC_STEP(TC_I, c, d, a, b, M[2], 0x2ad7d2bb, 15)  TC_STEP(TC_I, b, c, d, a, M[9], 0xeb86d391, 21)

#define TC_MD5_A0 0x67452301u
#define TC_MD5_B0 0xefcdab89u
#define TC_MD5_C0 0x98badcfeu
#define TC_MD5_D0 0x10325476u

static inline uint32_t tc_load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void tc_md5_compress(uint32_t st[4], const uint8_t block[64]) {
    uint32_t M[16];
    for (int j = 0; j < 16; j++) M[j] = tc_load_le32(block + 4 * j);
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    TC_MD5_ROUNDS_TO_A(a, b, c, d, M)
    TC_MD5_LAST3(a, b, c, d, M)
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
}

/* Pads the tail (< 64 bytes) of a message of total length `total` into one or two blocks. */
static inline int tc_md5_pad(uint8_t out[128], const uint8_t *tail, size_t tail_len, uint64_t total) {
    int blocks = tail_len <= TC_MD5_ONE_BLOCK_MAX ? 1 : 2;
    memset(out, 0, 64 * (size_t)blocks);
    memcpy(out, tail, tail_len);
    out[tail_len] = 0x80;
    uint64_t bits = total * 8u;
    uint8_t *len_at = out + 64 * blocks - 8;
    for (int i = 0; i < 8; i++) len_at[i] = (uint8_t)(bits >> (8 * i));
    return blocks;
}

static inline void tc_md5_words(const uint8_t *msg, size_t len, uint32_t out[4]) {
    uint32_t st[4] = {TC_MD5_A0, TC_MD5_B0, TC_MD5_C0, TC_MD5_D0};
    size_t full = len & ~(size_t)63;
    for (size_t off = 0; off < full; off += 64) tc_md5_compress(st, msg + off);
    uint8_t tail[128];
    int blocks = tc_md5_pad(tail, msg + full, len - full, (uint64_t)len);
    for (int i = 0; i < blocks; i++) tc_md5_compress(st, tail + 64 * i);
    out[0] = st[0]; out[1] = st[1]; out[2] = st[2]; out[3] = st[3];
}

/* Word A (= ketama replica 0) of the MD5 of any message: the routing hash. Messages of at
 * most 55 bytes (nearly every key) take one block, built in place, and stop after step 61. */
static inline uint32_t tc_md5_a(const uint8_t *msg, size_t len) {
    if (len > TC_MD5_ONE_BLOCK_MAX) {
        uint32_t words[4];
        tc_md5_words(msg, len, words);
        return words[0];
    }
    union { uint8_t bytes[64]; uint32_t words[16]; } blk;
    memset(blk.bytes, 0, 64);
    memcpy(blk.bytes, msg, len);
    blk.bytes[len] = 0x80;
    uint32_t M[16];
    for (int j = 0; j < 16; j++) M[j] = tc_load_le32(blk.bytes + 4 * j);
    M[14] = (uint32_t)(len * 8u);
    uint32_t a = TC_MD5_A0, b = TC_MD5_B0, c = TC_MD5_C0, d = TC_MD5_D0;
    TC_MD5_ROUNDS_TO_A(a, b, c, d, M)
    return a + TC_MD5_A0;
}

#if defined(__SIZEOF_INT128__)
#define TC_MD5_HAVE_INT_KEYS 1
/* Word A of the MD5 of str(value) for |value| < 10**15: the digits are built in a 128-bit
 * register, two at a time, and go straight into the message words (no bytes in memory, so
 * no store-to-load stall between formatting and hashing). Returns 0 when out of range. */
static inline int tc_md5_a_small_int(long long value, uint32_t *hash) {
    static const char pairs[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    unsigned long long v = value < 0 ? (unsigned long long)(-(value + 1)) + 1
                                     : (unsigned long long)value;
    if (v >= 1000000000000000ULL) return 0;
    unsigned __int128 acc = 0;
    unsigned n = 0;
    while (v >= 100) {
        unsigned p = (unsigned)(v % 100) * 2;
        v /= 100;
        acc = (acc << 16) | (unsigned)(uint8_t)pairs[p] | ((unsigned)(uint8_t)pairs[p + 1] << 8);
        n += 2;
    }
    if (v >= 10) {
        unsigned p = (unsigned)v * 2;
        acc = (acc << 16) | (unsigned)(uint8_t)pairs[p] | ((unsigned)(uint8_t)pairs[p + 1] << 8);
        n += 2;
    } else {
        acc = (acc << 8) | (unsigned)('0' + v);
        n += 1;
    }
    if (value < 0) {
        acc = (acc << 8) | (unsigned)'-';
        n += 1;
    }
    uint32_t M[16] = {0};
    if (n < 16) acc |= (unsigned __int128)0x80 << (8 * n);
    else M[4] = 0x80u;                        /* 16 chars: the pad byte starts word 4 */
    M[0] = (uint32_t)acc; M[1] = (uint32_t)(acc >> 32);
    M[2] = (uint32_t)(acc >> 64); M[3] = (uint32_t)(acc >> 96);
    M[14] = n * 8u;
    uint32_t a = TC_MD5_A0, b = TC_MD5_B0, c = TC_MD5_C0, d = TC_MD5_D0;
    TC_MD5_ROUNDS_TO_A(a, b, c, d, M)
    *hash = a + TC_MD5_A0;
    return 1;
}
#else
static inline int tc_md5_a_small_int(long long value, uint32_t *hash) {
    (void)value; (void)hash;
    return 0;   /* no 128-bit integers: callers take the generic path */
}
#endif

#if defined(__GNUC__) || defined(__clang__)
#define TC_MD5_HAVE_LANES 1
typedef uint32_t tc_v8u __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* One binary, best code for the CPU it runs on (chosen once by the loader). */
#define TC_MD5_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define TC_MD5_CLONES
#endif

/* Word A (= ketama replica 0) of the MD5 of eight messages of <= 55 bytes each. */
TC_MD5_CLONES
static void tc_md5_x8(const uint8_t *const msgs[8], const size_t lens[8], uint32_t out[8]) {
    uint8_t blocks[8][64];
    tc_v8u M[16];
    for (int l = 0; l < 8; l++) {
        uint8_t *blk = blocks[l];
        size_t n = lens[l];
        memset(blk, 0, 64);
        memcpy(blk, msgs[l], n);
        blk[n] = 0x80;
        uint64_t bits = (uint64_t)n * 8u;
        blk[56] = (uint8_t)bits; blk[57] = (uint8_t)(bits >> 8);
    }
    for (int j = 0; j < 16; j++)
        for (int l = 0; l < 8; l++) M[j][l] = tc_load_le32(blocks[l] + 4 * j);
    tc_v8u a = {0}, b = {0}, c = {0}, d = {0};
    a += TC_MD5_A0; b += TC_MD5_B0; c += TC_MD5_C0; d += TC_MD5_D0;
    TC_MD5_ROUNDS_TO_A(a, b, c, d, M)
    a += TC_MD5_A0;
    for (int l = 0; l < 8; l++) out[l] = a[l];
}
#endif

#endif /* TC_MD5_H */
