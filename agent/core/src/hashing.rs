//! Readers and writers that hash and count what passes through them, so the
//! archive is checksummed in the same pass that builds or reads it.

use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read, Write};

pub fn hex_digest(h: Sha256) -> String {
    hex::encode(h.finalize())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Counts and hashes every byte written to the inner writer.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex_digest(self.hasher))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts and hashes every byte read from the inner reader.
pub struct HashingReader<R> {
    inner: R,
    /// None once [`HashingReader::counting_only`]: bytes are counted only.
    hasher: Option<Sha256>,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            bytes: 0,
        }
    }

    /// Counts the bytes read from here on without hashing them: the hash
    /// [`HashingReader::finish`] returns is then empty.
    pub fn counting_only(mut self) -> Self {
        self.hasher = None;
        self
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> (R, u64, String) {
        (
            self.inner,
            self.bytes,
            self.hasher.map(hex_digest).unwrap_or_default(),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Read through its buffer, a [`HashingReader`] hashes what is consumed:
/// the visitor of a restore writes the bytes where they lie, with no copy
/// into a buffer of its own.
impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    /// Hashes the `n` bytes given up. They are asked of the inner reader
    /// again, which hands back the same unconsumed bytes without reading
    /// (as every `BufRead` here does); were it to fail instead, the hash
    /// would be wrong, so the read fails its check, never the other way.
    fn consume(&mut self, n: usize) {
        if let Some(h) = &mut self.hasher {
            if let Ok(buf) = self.inner.fill_buf() {
                h.update(&buf[..n.min(buf.len())]);
            }
        }
        self.bytes += n as u64;
        self.inner.consume(n);
    }
}

/// [`BufRead`] over a reader, through a buffer borrowed for its life (one
/// buffer serves every entry of an archive). The buffer is filled whole
/// when the reader has that much, so writes from it are large.
pub struct Buffered<'b, R> {
    inner: R,
    buf: &'b mut [u8],
    pos: usize,
    filled: usize,
    /// A read error after some bytes: returned once those are consumed.
    failed: Option<io::Error>,
}

impl<'b, R: Read> Buffered<'b, R> {
    pub fn new(inner: R, buf: &'b mut [u8]) -> Self {
        Buffered {
            inner,
            buf,
            pos: 0,
            filled: 0,
            failed: None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Buffered<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_from_buffer(self, out)
    }
}

/// `Read::read` for a reader whose bytes are in its own buffer: copies
/// what the buffer holds, up to `out`'s length, and consumes it.
pub fn read_from_buffer(r: &mut impl BufRead, out: &mut [u8]) -> io::Result<usize> {
    if out.is_empty() {
        return Ok(0);
    }
    let n = {
        let buf = r.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        n
    };
    r.consume(n);
    Ok(n)
}

impl<R: Read> BufRead for Buffered<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            self.pos = 0;
            self.filled = 0;
            while self.filled < self.buf.len() {
                match self.inner.read(&mut self.buf[self.filled..]) {
                    Ok(0) => break,
                    Ok(k) => self.filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if self.filled == 0 => return Err(e),
                    // Bytes already read are handed out first.
                    Err(e) => {
                        self.failed = Some(e);
                        break;
                    }
                }
            }
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

/// Reads `r` to its end through its buffer (no copy); returns how many
/// bytes it had.
pub fn drain(r: &mut dyn BufRead) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = r.fill_buf()?.len();
        if k == 0 {
            return Ok(n);
        }
        r.consume(k);
        n += k as u64;
    }
}

/// The initial hash value of SHA-256 (FIPS 180-4, 5.3.3).
const SHA256_H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Where a SHA-256 stood after the first `offset` bytes of a stream
/// (`offset` a multiple of 64): enough to hash the rest of the stream
/// later without reading those bytes again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Midstate {
    pub offset: u64,
    /// The eight state words, big-endian, in hex.
    pub state: String,
}

/// SHA-256 of a stream that can stop at any 64-byte boundary, say where it
/// stood ([`Sha256Stream::midstate`]) and be taken up again from there
/// ([`Sha256Stream::resume`]). The rounds are `sha2`'s (the same code, and
/// the same CPU instructions, as [`Sha256`]); only the buffering and the
/// final padding are here, and the tests hold it to [`Sha256::digest`].
#[derive(Clone)]
pub struct Sha256Stream {
    h: [u32; 8],
    /// Bytes hashed, the tail included.
    len: u64,
    tail: [u8; 64],
    tail_len: usize,
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Sha256Stream {
            h: SHA256_H0,
            len: 0,
            tail: [0; 64],
            tail_len: 0,
        }
    }
}

type Block = sha2::digest::generic_array::GenericArray<u8, sha2::digest::typenum::U64>;

impl Sha256Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a stream up where `m` says it stood; `None` if `m` is not a
    /// midstate (damaged, or not at a block boundary).
    pub fn resume(m: &Midstate) -> Option<Self> {
        let bytes = hex::decode(&m.state).ok()?;
        if bytes.len() != 32 || m.offset % 64 != 0 {
            return None;
        }
        let mut h = [0u32; 8];
        for (w, b) in h.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        Some(Sha256Stream {
            h,
            len: m.offset,
            ..Self::default()
        })
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the stream stands, if that is at a block boundary.
    pub fn midstate(&self) -> Option<Midstate> {
        (self.tail_len == 0).then(|| Midstate {
            offset: self.len,
            state: hex::encode(
                self.h
                    .iter()
                    .flat_map(|w| w.to_be_bytes())
                    .collect::<Vec<u8>>(),
            ),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let take = data.len().min(64 - self.tail_len);
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 64 {
                return;
            }
            let block = Block::clone_from_slice(&self.tail);
            sha2::compress256(&mut self.h, std::slice::from_ref(&block));
            self.tail_len = 0;
        }
        // Whole blocks straight from `data` (copying them into blocks first
        // made hashing 8% slower).
        let whole = data.len() / 64;
        // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over
        // `[u8; 64]`: size 64, alignment 1, any bytes valid; the slice
        // covers `whole * 64` bytes of `data`, borrowed for this call.
        let blocks: &[Block] =
            unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<Block>(), whole) };
        sha2::compress256(&mut self.h, blocks);
        let rest = &data[whole * 64..];
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The SHA-256 of everything hashed, in hex.
    pub fn finish_hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 128];
        pad[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        pad[self.tail_len] = 0x80;
        let total = if self.tail_len < 56 { 64 } else { 128 };
        pad[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        let blocks: Vec<Block> = pad[..total]
            .chunks_exact(64)
            .map(Block::clone_from_slice)
            .collect();
        sha2::compress256(&mut self.h, &blocks);
        hex::encode(
            self.h
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<u8>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per read, and fails after `fail_at`.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        fail_at: Option<usize>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn a_buffered_hashing_reader_hashes_exactly_what_is_consumed() {
        let data = bytes(300_000, 7);
        let mut buf = vec![0u8; 64 * 1024];
        let source = Trickle {
            data: data.clone(),
            pos: 0,
            step: 10_000,
            fail_at: None,
        };
        let mut r = HashingReader::new(Buffered::new(source, &mut buf));
        // Fills the whole buffer from many small reads.
        assert_eq!(r.fill_buf().unwrap().len(), 64 * 1024);
        // Part through the buffer, part copied out, the rest drained.
        r.consume(1000);
        let mut out = [0u8; 5000];
        assert_eq!(r.read(&mut out).unwrap(), 5000);
        assert_eq!(&out[..], &data[1000..6000]);
        assert_eq!(drain(&mut r).unwrap(), 294_000);
        let (_, n, sha) = r.finish();
        assert_eq!(n, 300_000);
        assert_eq!(sha, sha256_hex(&data));
    }

    #[test]
    fn a_read_error_comes_after_the_bytes_read_before_it() {
        let data = bytes(100_000, 3);
        let mut buf = vec![0u8; 64 * 1024];
        let source = Trickle {
            data: data.clone(),
            pos: 0,
            step: 30_000,
            fail_at: Some(90_000),
        };
        let mut r = Buffered::new(source, &mut buf);
        assert_eq!(r.fill_buf().unwrap(), &data[..64 * 1024]);
        r.consume(64 * 1024);
        // One more read of 30 000 bytes came before the error.
        assert_eq!(r.fill_buf().unwrap(), &data[64 * 1024..64 * 1024 + 30_000]);
        r.consume(30_000);
        assert_eq!(r.fill_buf().unwrap_err().to_string(), "disk on fire");
    }

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_stream_is_sha256_whatever_the_pieces() {
        for (n, seed) in [
            (0, 1),
            (1, 2),
            (55, 3),
            (56, 4),
            (63, 5),
            (64, 6),
            (65, 7),
            (119, 8),
            (120, 9),
            (128, 10),
            (4096, 11),
            (64 * 64 * 3 + 17, 12),
            (1 << 20, 13),
        ] {
            let data = bytes(n, seed);
            let want = sha256_hex(&data);
            let mut one = Sha256Stream::new();
            one.update(&data);
            assert_eq!(one.len(), n as u64);
            assert_eq!(one.finish_hex(), want, "{n} bytes in one piece");
            for piece in [1, 7, 63, 64, 100, 4097] {
                let mut s = Sha256Stream::new();
                for p in data.chunks(piece) {
                    s.update(p);
                }
                assert_eq!(s.finish_hex(), want, "{n} bytes in pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_stream_resumes_from_a_saved_midstate_only() {
        let data = bytes(10_000, 42);
        let want = sha256_hex(&data);
        let mut s = Sha256Stream::new();
        s.update(&data[..100]);
        assert_eq!(s.midstate(), None, "not at a block boundary");
        s.update(&data[100..128 * 40]);
        let m = s.midstate().expect("at a block boundary");
        assert_eq!(m.offset, 128 * 40);
        // Saved as the record would, and read back.
        let m: Midstate = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        let mut r = Sha256Stream::resume(&m).unwrap();
        r.update(&data[m.offset as usize..]);
        assert_eq!(r.finish_hex(), want);
        // The start of a stream is a midstate too.
        let start = Sha256Stream::new().midstate().unwrap();
        let mut r = Sha256Stream::resume(&start).unwrap();
        r.update(&data);
        assert_eq!(r.finish_hex(), want);
        for bad in [
            Midstate {
                offset: 100,
                ..m.clone()
            },
            Midstate {
                state: "00".into(),
                ..m.clone()
            },
            Midstate {
                state: "zz".repeat(32),
                ..m.clone()
            },
        ] {
            assert!(Sha256Stream::resume(&bad).is_none(), "{bad:?}");
        }
    }
}
