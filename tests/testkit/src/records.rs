//! Kafka v2 record batches with synthetic payloads.
//!
//! Layout of a v2 batch (all integers big-endian):
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (=2)
//! crc u32 (CRC-32C of everything from attributes to the end)
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32
//! records...
//! ```
//!
//! and each record is
//!
//! ```text
//! length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//! keyLength varint | key | valueLength varint | value | headerCount varint
//! ```
//!
//! where varints use zig-zag encoding as in protobuf.
//!
//! Speed matters (tests generate several GiB), so the JSON-like values are
//! rendered once into a [`ValuePool`] and each record copies one pooled value
//! and patches a sequence number into it: a memcpy plus ten digit bytes.

use crate::crc32c::crc32c;
use crate::rng::Rng;

/// Size of the fixed part of a v2 batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of the `attributes` field; the CRC covers `[ATTRIBUTES_AT..]`.
const ATTRIBUTES_AT: usize = 21;
/// Offset of the CRC field.
const CRC_AT: usize = 17;

/// Every pooled JSON value starts with this, followed by 10 digits that are
/// overwritten with the record's offset so no two records are identical.
const SEQ_PREFIX: &[u8] = b"{\"seq\":";
const SEQ_DIGITS: usize = 10;

// ---------------------------------------------------------------------------
// Varints

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Encoded length of a zig-zag varint.
#[inline]
pub fn varint_len(v: i64) -> usize {
    let mut z = zigzag(v);
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

/// Unsigned varint (used by the KRaft metadata record framing).
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, mut z: u64) {
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

// ---------------------------------------------------------------------------
// Payloads

/// Kinds of topic payload; each gets its own region of the value pool so a
/// topic's records look alike (as they would in a real topic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonKind {
    Order,
    Payment,
    Click,
}

impl JsonKind {
    pub const ALL: [JsonKind; 3] = [JsonKind::Order, JsonKind::Payment, JsonKind::Click];

    fn index(self) -> usize {
        match self {
            JsonKind::Order => 0,
            JsonKind::Payment => 1,
            JsonKind::Click => 2,
        }
    }
}

/// A run of random characters inside a pooled value, re-randomized each
/// time the value is used so that records are not verbatim repeats.
#[derive(Clone, Copy, Debug)]
struct Span {
    /// Offset from the start of the value.
    at: u16,
    len: u8,
    kind: SpanKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpanKind {
    Digits,
    Hex,
    Base64,
}

const HEX_CHARS: &[u8; 16] = b"0123456789abcdef";
const BASE64_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Clone, Copy, Debug)]
struct PooledValue {
    start: u32,
    len: u32,
    first_span: u32,
    spans: u32,
}

/// Pre-rendered JSON record values, split into one region per [`JsonKind`].
///
/// Copying a pooled value verbatim would make the data far too compressible
/// (a compressor finds the repeats), so each pooled value also lists its
/// random spans (ids, numbers), which are refilled with fresh random
/// characters per record: the structure is reused, the entropy is not.
pub struct ValuePool {
    data: Vec<u8>,
    spans: Vec<Span>,
    values: [Vec<PooledValue>; 3],
}

impl ValuePool {
    /// Renders roughly `bytes` of values (at least one value per kind).
    pub fn new(seed: u64, bytes: usize) -> ValuePool {
        let mut r = Renderer {
            out: Vec::with_capacity(bytes + 4096),
            value_start: 0,
            spans: Vec::new(),
        };
        let mut values: [Vec<PooledValue>; 3] = Default::default();
        let per_kind = bytes / 3;
        for kind in JsonKind::ALL {
            let mut rng = Rng::derive(seed, "value-pool", kind.index() as u64);
            let region_start = r.out.len();
            while values[kind.index()].is_empty() || r.out.len() - region_start < per_kind {
                r.value_start = r.out.len();
                let first_span = r.spans.len();
                render_json(&mut rng, kind, &mut r);
                values[kind.index()].push(PooledValue {
                    start: r.value_start as u32,
                    len: (r.out.len() - r.value_start) as u32,
                    first_span: first_span as u32,
                    spans: (r.spans.len() - first_span) as u32,
                });
            }
        }
        ValuePool {
            data: r.out,
            spans: r.spans,
            values,
        }
    }

    /// A random pooled value of `kind`, with its random spans.
    #[inline]
    fn value(&self, kind: JsonKind, rng: &mut Rng) -> (&[u8], &[Span]) {
        let list = &self.values[kind.index()];
        let v = list[rng.below(list.len() as u64) as usize];
        (
            &self.data[v.start as usize..(v.start + v.len) as usize],
            &self.spans[v.first_span as usize..(v.first_span + v.spans) as usize],
        )
    }
}

/// Refills the random spans of a copied value.
#[inline]
fn scramble(value: &mut [u8], spans: &[Span], rng: &mut Rng) {
    for s in spans {
        let field = &mut value[s.at as usize..s.at as usize + s.len as usize];
        fill_random(field, s.kind, rng);
    }
}

/// Fills `field` with random characters of `kind`, using each 64-bit random
/// value for as many characters as it has bits for.
#[inline]
fn fill_random(field: &mut [u8], kind: SpanKind, rng: &mut Rng) {
    let mut bits = rng.next_u64();
    match kind {
        SpanKind::Hex => {
            for (i, c) in field.iter_mut().enumerate() {
                if i % 16 == 15 {
                    bits = rng.next_u64();
                }
                *c = HEX_CHARS[(bits & 0xf) as usize];
                bits >>= 4;
            }
        }
        SpanKind::Base64 => {
            for (i, c) in field.iter_mut().enumerate() {
                if i % 10 == 9 {
                    bits = rng.next_u64();
                }
                *c = BASE64_CHARS[(bits & 0x3f) as usize];
                bits >>= 6;
            }
        }
        SpanKind::Digits => {
            for (i, c) in field.iter_mut().enumerate() {
                if i % 19 == 18 {
                    bits = rng.next_u64();
                }
                *c = b'0' + (bits % 10) as u8;
                bits /= 10;
            }
        }
    }
}

const STATUSES: &[&str] = &[
    "CREATED",
    "PAID",
    "PACKED",
    "SHIPPED",
    "DELIVERED",
    "CANCELLED",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "SEK", "PLN"];
const COUNTRIES: &[&str] = &["DE", "US", "FR", "NL", "GB", "SE", "PL", "ES", "IT"];
const METHODS: &[&str] = &["card", "sepa_debit", "paypal", "apple_pay", "ideal"];
const BRANDS: &[&str] = &["visa", "mastercard", "amex"];
const MERCHANTS: &[&str] = &[
    "acme-hardware",
    "blue-fox-books",
    "northwind-traders",
    "contoso-outdoor",
    "globex-electronics",
    "initech-office",
];
const EVENTS: &[&str] = &[
    "page_view",
    "click",
    "scroll",
    "add_to_cart",
    "search",
    "checkout_start",
];
const PATHS: &[&str] = &[
    "product",
    "category",
    "search",
    "cart",
    "account/orders",
    "deals",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
];

/// Decimal digits of `v`.
fn push_num(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends value text to the pool and records its random spans.
struct Renderer {
    out: Vec<u8>,
    value_start: usize,
    spans: Vec<Span>,
}

impl Renderer {
    fn text(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn mark(&mut self, start: usize, kind: SpanKind) {
        let len = self.out.len() - start;
        if len > 0 {
            self.spans.push(Span {
                at: (start - self.value_start) as u16,
                len: len as u8,
                kind,
            });
        }
    }

    /// `len` random characters of `kind` (refilled per record).
    fn random(&mut self, rng: &mut Rng, len: usize, kind: SpanKind) {
        let start = self.out.len();
        self.out.resize(start + len, 0);
        fill_random(&mut self.out[start..], kind, rng);
        self.mark(start, kind);
    }

    /// `len` random lowercase hex characters.
    fn hex(&mut self, rng: &mut Rng, len: usize) {
        self.random(rng, len, SpanKind::Hex);
    }

    /// Distributed-tracing context, present in every value: 24 random bytes.
    fn trace(&mut self, rng: &mut Rng) {
        self.text(",\"trace\":{\"trace_id\":\"");
        self.hex(rng, 32);
        self.text("\",\"span_id\":\"");
        self.hex(rng, 16);
        self.text("\"}");
    }

    /// A random number in `lo..=hi`; all digits but the first are random
    /// per record (so the magnitude stays plausible).
    fn num(&mut self, rng: &mut Rng, lo: u64, hi: u64) {
        let start = self.out.len();
        push_num(&mut self.out, rng.range(lo, hi));
        self.mark(start + 1, SpanKind::Digits);
    }

    /// A number from a small set (not re-randomized).
    fn fixed_num(&mut self, v: u64) {
        push_num(&mut self.out, v);
    }

    /// `int.dd` with two decimals.
    fn money(&mut self, rng: &mut Rng, max_units: u64) {
        self.num(rng, 0, max_units);
        self.out.push(b'.');
        self.num(rng, 10, 99);
    }

    fn bool(&mut self, rng: &mut Rng, p_true: f64) {
        self.text(if rng.chance(p_true) { "true" } else { "false" });
    }

    fn iso_time(&mut self, rng: &mut Rng) {
        self.text("2026-11-");
        self.fixed_num(rng.range(10, 19));
        self.out.push(b'T');
        for (i, max) in [24u64, 60, 60].into_iter().enumerate() {
            if i > 0 {
                self.out.push(b':');
            }
            let v = rng.below(max);
            self.out.push(b'0' + (v / 10) as u8);
            self.out.push(b'0' + (v % 10) as u8);
        }
        self.out.push(b'.');
        self.num(rng, 100, 999);
        self.out.push(b'Z');
    }
}

/// Renders one JSON object. Field names repeat and many values come from
/// small vocabularies (compressible), while ids and numbers are random
/// (incompressible), which lands zstd at roughly 2.5-4x like real JSON topics.
fn render_json(rng: &mut Rng, kind: JsonKind, r: &mut Renderer) {
    r.out.extend_from_slice(SEQ_PREFIX);
    r.out.extend_from_slice(&[b'0'; SEQ_DIGITS]);
    match kind {
        JsonKind::Order => {
            r.text(",\"order_id\":\"ord-");
            r.hex(rng, 16);
            r.text("\",\"customer_id\":");
            r.num(rng, 10_000, 9_999_999);
            r.text(",\"status\":\"");
            r.text(rng.pick(STATUSES));
            r.text("\",\"currency\":\"");
            r.text(rng.pick(CURRENCIES));
            r.text("\",\"total\":");
            r.money(rng, 2000);
            r.text(",\"items\":[");
            for i in 0..rng.range(1, 6) {
                if i > 0 {
                    r.text(",");
                }
                r.text("{\"sku\":\"SKU-");
                r.num(rng, 10_000, 99_999);
                r.text("\",\"qty\":");
                r.fixed_num(rng.range(1, 5));
                r.text(",\"unit_price\":");
                r.money(rng, 400);
                r.text(",\"gift_wrap\":");
                r.bool(rng, 0.1);
                r.text("}");
            }
            r.text("],\"shipping\":{\"country\":\"");
            r.text(rng.pick(COUNTRIES));
            r.text("\",\"postcode\":\"");
            r.num(rng, 10_000, 99_999);
            r.text("\",\"express\":");
            r.bool(rng, 0.2);
            r.text("},\"created_at\":\"");
            r.iso_time(rng);
            r.text("\",\"checkout_token\":\"");
            r.random(rng, 48, SpanKind::Base64);
            r.text("\"");
            r.trace(rng);
            r.text("}");
        }
        JsonKind::Payment => {
            r.text(",\"payment_id\":\"pay_");
            r.hex(rng, 24);
            r.text("\",\"order_ref\":\"ord-");
            r.hex(rng, 16);
            r.text("\",\"method\":\"");
            r.text(rng.pick(METHODS));
            r.text("\",\"card\":{\"brand\":\"");
            r.text(rng.pick(BRANDS));
            r.text("\",\"last4\":\"");
            r.num(rng, 1000, 9999);
            r.text("\"},\"amount_minor\":");
            r.num(rng, 100, 500_000);
            r.text(",\"currency\":\"");
            r.text(rng.pick(CURRENCIES));
            r.text("\",\"risk_score\":0.");
            r.num(rng, 100, 999);
            r.text(",\"approved\":");
            r.bool(rng, 0.93);
            r.text(",\"processor_latency_ms\":");
            r.num(rng, 20, 1500);
            r.text(",\"merchant\":\"");
            r.text(rng.pick(MERCHANTS));
            r.text("\",\"captured_at\":\"");
            r.iso_time(rng);
            r.text("\",\"auth_signature\":\"");
            r.random(rng, 64, SpanKind::Base64);
            r.text("\"");
            r.trace(rng);
            r.text("}");
        }
        JsonKind::Click => {
            r.text(",\"event\":\"");
            r.text(rng.pick(EVENTS));
            r.text("\",\"session\":\"");
            r.hex(rng, 32);
            r.text("\",\"user_id\":");
            if rng.chance(0.3) {
                r.text("null");
            } else {
                r.num(rng, 1, 4_000_000);
            }
            r.text(",\"url\":\"https://shop.example.com/");
            r.text(rng.pick(PATHS));
            r.text("/");
            r.num(rng, 1, 250_000);
            r.text("\",\"referrer\":\"https://www.example.org/search?q=");
            r.hex(rng, 6);
            r.text("\",\"ua\":\"");
            r.text(rng.pick(AGENTS));
            r.text("\",\"viewport\":{\"w\":");
            r.fixed_num(rng.pick(&[360u64, 390, 768, 1280, 1440, 1920, 2560]));
            r.text(",\"h\":");
            r.fixed_num(rng.pick(&[640u64, 844, 1024, 800, 900, 1080, 1440]));
            r.text("},\"ts\":");
            r.num(rng, 1_795_000_000_000, 1_795_200_000_000);
            r.text(",\"device_fingerprint\":\"");
            r.random(rng, 43, SpanKind::Base64);
            r.text("\"");
            r.trace(rng);
            r.text("}");
        }
    }
}

// ---------------------------------------------------------------------------
// Batches

/// What kind of records a partition holds.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// An application topic with JSON values. `keyed` topics get string keys.
    Json { kind: JsonKind, keyed: bool },
    /// `__consumer_offsets`: binary offset-commit keys and values.
    OffsetCommits {
        groups: Vec<String>,
        topics: Vec<String>,
    },
    /// KRaft metadata records (approximations of the real schemas).
    Metadata { topics: Vec<(String, [u8; 16])> },
}

/// Header fields of a batch that vary per batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchMeta {
    pub base_offset: i64,
    pub leader_epoch: i32,
    pub base_timestamp: i64,
    /// `-1` for non-idempotent appends (coordinators, the metadata log).
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// Summary of an encoded batch, for indexes and producer state.
#[derive(Clone, Copy, Debug)]
pub struct BatchInfo {
    pub len: usize,
    pub records: u32,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// Encodes record batches of one flavor.
pub struct BatchEncoder<'a> {
    pool: &'a ValuePool,
    flavor: Flavor,
    rng: Rng,
    /// Running counter used by the metadata flavor to cycle through record types.
    meta_counter: u64,
}

impl<'a> BatchEncoder<'a> {
    pub fn new(pool: &'a ValuePool, flavor: Flavor, rng: Rng) -> BatchEncoder<'a> {
        BatchEncoder {
            pool,
            flavor,
            rng,
            meta_counter: 0,
        }
    }

    /// Appends one batch to `out`, adding records until the batch is at
    /// least `target_len` bytes (at least one record, at most `max_records`).
    pub fn encode(
        &mut self,
        out: &mut Vec<u8>,
        meta: BatchMeta,
        target_len: usize,
        max_records: u32,
    ) -> BatchInfo {
        let start = out.len();
        out.resize(start + BATCH_HEADER_LEN, 0);
        let mut ts_delta: i64 = 0;
        let mut count: u32 = 0;
        let mut key = Vec::with_capacity(64);
        let mut value = Vec::new();
        // Copy the reference so pooled slices borrow the pool, not `self`.
        let pool = self.pool;
        while count == 0 || (out.len() - start < target_len && count < max_records) {
            key.clear();
            let has_key = self.make_key(&mut key);
            // Values are borrowed from the pool for JSON topics; the other
            // flavors build them in `value`.
            let pooled = match &self.flavor {
                Flavor::Json { kind, .. } => Some(pool.value(*kind, &mut self.rng)),
                _ => None,
            };
            if pooled.is_none() {
                value.clear();
                self.make_value(&mut value, meta.base_timestamp + ts_delta);
            }
            let v: &[u8] = pooled.map_or(&value, |(v, _)| v);
            let offset_delta = i64::from(count);
            let key_len: i64 = if has_key { key.len() as i64 } else { -1 };
            let body_len = 1
                + varint_len(ts_delta)
                + varint_len(offset_delta)
                + varint_len(key_len)
                + key.len()
                + varint_len(v.len() as i64)
                + v.len()
                + 1;
            put_varint(out, body_len as i64);
            out.push(0); // record attributes (unused)
            put_varint(out, ts_delta);
            put_varint(out, offset_delta);
            put_varint(out, key_len);
            out.extend_from_slice(&key);
            put_varint(out, v.len() as i64);
            let value_at = out.len();
            out.extend_from_slice(v);
            if let Some((_, spans)) = pooled {
                let offset = meta.base_offset + i64::from(count);
                let copied = &mut out[value_at..];
                patch_seq(copied, offset as u64);
                scramble(copied, spans, &mut self.rng);
            }
            out.push(0); // header count
            count += 1;
            // Records in one producer batch are a few milliseconds apart.
            ts_delta += self.rng.below(4) as i64;
        }
        let last_delta = count as i32 - 1;
        let max_timestamp = meta.base_timestamp + ts_delta;
        let len = out.len() - start;
        let h = &mut out[start..start + BATCH_HEADER_LEN];
        h[0..8].copy_from_slice(&meta.base_offset.to_be_bytes());
        h[8..12].copy_from_slice(&((len - 12) as i32).to_be_bytes());
        h[12..16].copy_from_slice(&meta.leader_epoch.to_be_bytes());
        h[16] = 2; // magic
        h[21..23].copy_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
        h[23..27].copy_from_slice(&last_delta.to_be_bytes());
        h[27..35].copy_from_slice(&meta.base_timestamp.to_be_bytes());
        h[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
        h[43..51].copy_from_slice(&meta.producer_id.to_be_bytes());
        h[51..53].copy_from_slice(&meta.producer_epoch.to_be_bytes());
        h[53..57].copy_from_slice(&meta.base_sequence.to_be_bytes());
        h[57..61].copy_from_slice(&(count as i32).to_be_bytes());
        let crc = crc32c(&out[start + ATTRIBUTES_AT..]);
        out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        BatchInfo {
            len,
            records: count,
            last_offset: meta.base_offset + i64::from(last_delta),
            max_timestamp,
        }
    }

    /// Writes the record key into `key`; returns false for a null key.
    fn make_key(&mut self, key: &mut Vec<u8>) -> bool {
        match &self.flavor {
            Flavor::Json { keyed: false, .. } | Flavor::Metadata { .. } => false,
            Flavor::Json { kind, keyed: true } => {
                let prefix: &[u8] = match kind {
                    JsonKind::Order => b"customer-",
                    JsonKind::Payment => b"acct-",
                    JsonKind::Click => b"session-",
                };
                key.extend_from_slice(prefix);
                push_num(key, self.rng.range(100_000, 9_999_999));
                true
            }
            Flavor::OffsetCommits { groups, topics } => {
                // OffsetCommitKey v1: group, topic, partition.
                let group = groups[self.rng.below(groups.len() as u64) as usize].as_bytes();
                let topic = topics[self.rng.below(topics.len() as u64) as usize].as_bytes();
                key.extend_from_slice(&1i16.to_be_bytes());
                key.extend_from_slice(&(group.len() as i16).to_be_bytes());
                key.extend_from_slice(group);
                key.extend_from_slice(&(topic.len() as i16).to_be_bytes());
                key.extend_from_slice(topic);
                key.extend_from_slice(&(self.rng.below(12) as i32).to_be_bytes());
                true
            }
        }
    }

    fn make_value(&mut self, value: &mut Vec<u8>, timestamp: i64) {
        match &self.flavor {
            Flavor::Json { .. } => unreachable!("JSON values come from the pool"),
            Flavor::OffsetCommits { .. } => {
                // OffsetCommitValue v3: offset, leader epoch, metadata, commit timestamp.
                value.extend_from_slice(&3i16.to_be_bytes());
                value.extend_from_slice(&(self.rng.below(50_000_000) as i64).to_be_bytes());
                value.extend_from_slice(&0i32.to_be_bytes());
                value.extend_from_slice(&0i16.to_be_bytes());
                value.extend_from_slice(&timestamp.to_be_bytes());
            }
            Flavor::Metadata { topics } => {
                // Framing: frame version, api key, record version, then the
                // record's fields. Cycles through a few record types.
                let n = self.meta_counter;
                self.meta_counter += 1;
                let slot = n as usize % (topics.len() + 2);
                put_uvarint(value, 1);
                if slot < topics.len() {
                    // TopicRecord (api key 2): name, topic id.
                    let (name, id) = &topics[slot];
                    put_uvarint(value, 2);
                    put_uvarint(value, 0);
                    put_uvarint(value, name.len() as u64 + 1);
                    value.extend_from_slice(name.as_bytes());
                    value.extend_from_slice(id);
                } else if slot == topics.len() {
                    // PartitionChangeRecord-like (api key 5).
                    put_uvarint(value, 5);
                    put_uvarint(value, 0);
                    value.extend_from_slice(&(self.rng.below(64) as i32).to_be_bytes());
                    let mut id = [0u8; 16];
                    self.rng.fill(&mut id);
                    value.extend_from_slice(&id);
                    value.extend_from_slice(&(self.rng.range(1, 3) as i32).to_be_bytes());
                } else {
                    // NoOpRecord (api key 20), written periodically by the controller.
                    put_uvarint(value, 20);
                    put_uvarint(value, 0);
                }
                put_uvarint(value, 0); // tagged fields
            }
        }
    }
}

/// Overwrites the ten digits after `{"seq":` with `seq`.
#[inline]
fn patch_seq(value: &mut [u8], mut seq: u64) {
    let digits = &mut value[SEQ_PREFIX.len()..SEQ_PREFIX.len() + SEQ_DIGITS];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (seq % 10) as u8;
        seq /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_varint(buf: &[u8], pos: &mut usize) -> i64 {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        ((z >> 1) as i64) ^ -((z & 1) as i64)
    }

    #[test]
    fn batch_is_well_formed() {
        let pool = ValuePool::new(1, 64 * 1024);
        let flavor = Flavor::Json {
            kind: JsonKind::Order,
            keyed: true,
        };
        let mut enc = BatchEncoder::new(&pool, flavor, Rng::new(3));
        let mut out = Vec::new();
        let meta = BatchMeta {
            base_offset: 1000,
            leader_epoch: 4,
            base_timestamp: 1_795_000_000_000,
            producer_id: 7,
            producer_epoch: 0,
            base_sequence: 12,
        };
        let info = enc.encode(&mut out, meta, 8000, 1000);
        assert_eq!(info.len, out.len());
        assert!(info.len >= 8000);
        let be_i32 = |at: usize| i32::from_be_bytes(out[at..at + 4].try_into().unwrap());
        assert_eq!(be_i32(8) as usize, out.len() - 12);
        assert_eq!(out[16], 2);
        let crc = u32::from_be_bytes(out[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c(&out[21..]));
        let count = be_i32(57) as u32;
        assert_eq!(count, info.records);
        assert_eq!(i64::from(be_i32(23)), info.last_offset - 1000);
        // Walk the records and check framing and sequence patching.
        let mut pos = BATCH_HEADER_LEN;
        for i in 0..count {
            let len = read_varint(&out, &mut pos) as usize;
            let end = pos + len;
            pos += 1;
            let _ts = read_varint(&out, &mut pos);
            assert_eq!(read_varint(&out, &mut pos), i64::from(i));
            let klen = read_varint(&out, &mut pos);
            pos += klen as usize;
            let vlen = read_varint(&out, &mut pos) as usize;
            let value = &out[pos..pos + vlen];
            let expect = format!("{{\"seq\":{:010},", 1000 + i);
            assert!(value.starts_with(expect.as_bytes()));
            assert_eq!(*value.last().unwrap(), b'}');
            pos += vlen;
            assert_eq!(read_varint(&out, &mut pos), 0);
            assert_eq!(pos, end);
        }
        assert_eq!(pos, out.len());
    }
}
