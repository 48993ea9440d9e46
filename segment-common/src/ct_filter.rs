//! The conntrack filter (`SEG_CTF_V1`): a bitmap in front of the conntrack
//! tables, so that a packet of a flow nobody tracks (a flood of unknown
//! UDP, stray ACKs) skips their lookups instead of paying a DRAM round trip
//! in each multi-MiB bucket array. A clear bit means "no entry in
//! `SEG_CT_V2` nor in `SEG_CTPEND_V1`"; a set bit means "look". (The
//! revoked-flow tombstones of `SEG_CTGONE_V1` are looked up only for egress
//! TCP segments that missed conntrack, never by a flood from outside: not
//! filtered.)
//!
//! Layout of the array (`u64` words, `BPF_F_MMAPABLE`): word
//! [`CTF_ACTIVE`] says which bitmap the datapath tests (0: none yet, look
//! up everything; 1 or 2: bitmap 0 or 1); words [`CTF_KEY`] and
//! [`CTF_KEY`]` + 1` hold the hash key; then two bitmaps of
//! [`CTF_WORDS`] words each, from [`CTF_BITMAP0`]. Control and bitmaps live
//! in one map so that they are created (and lost) together: a fresh bitmap
//! can never meet an old "active" word.
//!
//! The hash is keyed with a random key the agent writes once into a fresh
//! map: flow keys carry addresses and ports an attacker chooses, and with a
//! fixed hash a flood could aim at the bits of tracked flows. It is not a
//! PRF — it does not need to be: a collision only costs the lookups the
//! filter would have saved, never a verdict.

/// Word holding the active bitmap: 0 none, 1 bitmap 0, 2 bitmap 1.
pub const CTF_ACTIVE: u32 = 0;
/// First of the two key words.
pub const CTF_KEY: u32 = 1;
/// First word of bitmap 0 (bitmap 1 follows it).
pub const CTF_BITMAP0: u32 = 4;
/// log2 of the bits in one bitmap: 2^20 bits = 128 KiB, small enough to
/// stay in a CPU's L2 cache, and at a full default conntrack (327,680
/// entries across both tables) still 73% clear.
pub const CTF_BITS_LOG2: u32 = 20;
pub const CTF_BITS: u32 = 1 << CTF_BITS_LOG2;
/// Words of one bitmap.
pub const CTF_WORDS: u32 = CTF_BITS / 64;
/// Entries of the array.
pub const CTF_ENTRIES: u32 = CTF_BITMAP0 + 2 * CTF_WORDS;

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Murmur3's 64-bit finaliser: every input bit reaches every output bit.
#[inline(always)]
const fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The keyed hash of a flow key (its 40 bytes as five words, the key mixed
/// into each), the same in the datapath and the agent.
#[inline(always)]
pub fn hash(key: &[u64; 2], k: &crate::CtKey) -> u64 {
    let w = |hi: u32, lo: u32| ((hi as u64) << 32) | lo as u64;
    let words = [
        w(k.addr_a[0], k.addr_a[1]),
        w(k.addr_a[2], k.addr_a[3]),
        w(k.addr_b[0], k.addr_b[1]),
        w(k.addr_b[2], k.addr_b[3]),
        ((k.port_a as u64) << 48)
            | ((k.port_b as u64) << 32)
            | ((k.proto as u64) << 8)
            | k.family as u64,
    ];
    let mut h = key[0];
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i] ^ key[1]).wrapping_mul(MUL);
        h ^= h >> 29;
        i += 1;
    }
    fmix(h ^ key[1].rotate_left(17))
}

/// The bit of a hash in one bitmap: its word (0-based, within the bitmap)
/// and the mask in that word. Taken from the high bits, which the last
/// multiply of [`fmix`] mixes best.
#[inline(always)]
pub const fn bit_of(h: u64) -> (u32, u64) {
    let bit = (h >> (64 - CTF_BITS_LOG2)) as u32;
    (bit / 64, 1u64 << (bit % 64))
}

/// Array index of `word` in bitmap `which` (0 or 1).
#[inline(always)]
pub const fn word_index(which: u32, word: u32) -> u32 {
    CTF_BITMAP0 + which * CTF_WORDS + word
}
