//! A pure-Rust reader of GGUF headers: enough metadata to list and describe a model without
//! loading it. Reads through a buffered reader and skips array contents, so a model of any
//! size costs a few MiB of reads at most (the tokenizer vocabulary dominates).
//!
//! Format: magic `GGUF`, u32 version (2 or 3), u64 tensor count, u64 key/value count, the
//! key/values, then one info record per tensor. All little-endian.
//!
//! Model files come from clients (uploads), so the reader assumes a hostile file: every
//! declared length or count is checked against the bytes left in the file before anything
//! is allocated or skipped, arrays of arrays are refused (llama.cpp reads one level only),
//! and nothing recurses on the input, so no file can exhaust the stack or the memory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EngineError;

const MAGIC: &[u8; 4] = b"GGUF";
/// Guards against absurd lengths in a corrupt or hostile file (on top of the file-size
/// bound, which alone would allow a multi-GiB string in a multi-GiB file).
const MAX_STRING: u64 = 64 << 20;
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;
/// The fewest bytes one key/value can take: key length (u64), value type (u32), a u8.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// The fewest bytes one tensor info can take: name length (u64), dimension count (u32),
/// tensor type (u32), data offset (u64).
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;
/// The fewest bytes one string takes: its u64 length.
const MIN_STRING_BYTES: u64 = 8;

/// True when the bytes start with the GGUF magic.
pub fn is_gguf(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(MAGIC)
}

/// What the registry and API show about a model file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufMetadata {
    /// `general.architecture`, e.g. `gemma3`, `llama`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.parameter_count`, else the sum of the tensors' element counts.
    pub parameter_count: Option<u64>,
    /// `<architecture>.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `general.file_type` as llama.cpp names it, e.g. `Q4_K_M`.
    pub quantization: Option<String>,
    /// `tokenizer.chat_template` (Jinja source).
    pub chat_template: Option<String>,
}

/// Reads the header and metadata of the GGUF file at `path`.
///
/// Blocking I/O: call it from `spawn_blocking` in async code.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<GgufMetadata, EngineError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => EngineError::ModelNotFound(path.display().to_string()),
        _ => EngineError::Internal(format!("open {}: {e}", path.display())),
    })?;
    let len = file
        .metadata()
        .map_err(|e| EngineError::Internal(format!("stat {}: {e}", path.display())))?
        .len();
    parse(BufReader::with_capacity(256 << 10, file), len).map_err(|e| match e {
        ParseError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            EngineError::InvalidModel(format!("{}: truncated GGUF header", path.display()))
        }
        ParseError::Io(e) => EngineError::Internal(format!("read {}: {e}", path.display())),
        ParseError::Invalid(m) => EngineError::InvalidModel(format!("{}: {m}", path.display())),
    })
}

/// [`read_metadata`] over bytes in memory (the fuzz target's entry).
#[doc(hidden)]
pub fn parse_slice(bytes: &[u8]) -> Result<GgufMetadata, String> {
    parse(bytes, bytes.len() as u64).map_err(|e| match e {
        ParseError::Io(e) => e.to_string(),
        ParseError::Invalid(m) => m,
    })
}

#[derive(Debug)]
enum ParseError {
    Io(io::Error),
    Invalid(String),
}

impl From<io::Error> for ParseError {
    fn from(e: io::Error) -> Self {
        ParseError::Io(e)
    }
}

type Result2<T> = Result<T, ParseError>;

fn invalid<T>(msg: impl Into<String>) -> Result2<T> {
    Err(ParseError::Invalid(msg.into()))
}

/// Value types of GGUF key/values.
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A scalar value we may keep; everything else is skipped.
enum Value {
    Int(i128),
    Str(String),
    Other,
}

struct Reader<R> {
    inner: R,
    /// Bytes of the file not read yet: the bound on every declared length.
    left: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result2<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        self.left = self.left.saturating_sub(N as u64);
        Ok(buf)
    }

    /// Refuses a declared size (`what` takes `n` bytes) that the rest of the file cannot
    /// hold, before anything is allocated or skipped.
    fn fits(&self, n: Option<u64>, what: impl FnOnce() -> String) -> Result2<u64> {
        match n {
            Some(n) if n <= self.left => Ok(n),
            _ => invalid(format!(
                "{} does not fit in the {} bytes left in the file",
                what(),
                self.left
            )),
        }
    }

    fn u32(&mut self) -> Result2<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result2<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// Skips `n` bytes (already checked against the file size) without buffering them.
    fn skip(&mut self, n: u64) -> Result2<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.left = self.left.saturating_sub(copied);
        if copied != n {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }

    /// A string's declared length, checked against the limit and the bytes left.
    fn string_len(&mut self) -> Result2<u64> {
        let len = self.u64()?;
        self.fits(Some(len), || format!("string of {len} bytes"))?;
        if len > MAX_STRING {
            return invalid(format!("string of {len} bytes is implausible"));
        }
        Ok(len)
    }

    fn string(&mut self) -> Result2<String> {
        let len = self.string_len()?;
        let mut buf = Vec::with_capacity(len as usize);
        (&mut self.inner).take(len).read_to_end(&mut buf)?;
        self.left = self.left.saturating_sub(buf.len() as u64);
        if buf.len() as u64 != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        String::from_utf8(buf).or_else(|_| invalid("string is not UTF-8"))
    }

    /// A count of records that take at least `min_bytes` each, checked against the limit
    /// and the bytes left.
    fn count(&mut self, what: &str, min_bytes: u64) -> Result2<u64> {
        let n = self.u64()?;
        self.fits(n.checked_mul(min_bytes), || format!("{what} count {n}"))?;
        if n > MAX_COUNT {
            return invalid(format!("{what} count {n} is implausible"));
        }
        Ok(n)
    }

    /// Reads a value of type `t`; strings are kept only when `keep_str`. Never recurses:
    /// an array's items are scalars or strings, skipped in a loop.
    fn value(&mut self, t: u32, keep_str: bool) -> Result2<Value> {
        Ok(match t {
            ty::U8 => Value::Int(self.bytes::<1>()?[0].into()),
            ty::I8 => Value::Int(i8::from_le_bytes(self.bytes()?).into()),
            ty::U16 => Value::Int(u16::from_le_bytes(self.bytes()?).into()),
            ty::I16 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            ty::U32 => Value::Int(self.u32()?.into()),
            ty::I32 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            ty::U64 => Value::Int(self.u64()?.into()),
            ty::I64 => Value::Int(i64::from_le_bytes(self.bytes()?).into()),
            ty::F32 | ty::BOOL | ty::F64 => {
                let size = self.fits(scalar_size(t), || "a scalar".into())?;
                self.skip(size)?;
                Value::Other
            }
            ty::STRING if keep_str => Value::Str(self.string()?),
            ty::STRING => {
                let len = self.string_len()?;
                self.skip(len)?;
                Value::Other
            }
            ty::ARRAY => {
                self.skip_array()?;
                Value::Other
            }
            other => return invalid(format!("unknown value type {other}")),
        })
    }

    /// Skips an array of scalars or strings. Arrays of arrays are refused, as llama.cpp
    /// refuses them: skipping them would need a stack (or recursion) as deep as the file
    /// says.
    fn skip_array(&mut self) -> Result2<()> {
        let item = self.u32()?;
        match item {
            ty::ARRAY => invalid("nested array (an array of arrays)"),
            ty::STRING => {
                let len = self.count("string array", MIN_STRING_BYTES)?;
                for _ in 0..len {
                    let n = self.string_len()?;
                    self.skip(n)?;
                }
                Ok(())
            }
            _ => {
                let Some(size) = scalar_size(item) else {
                    return invalid(format!("array of unknown value type {item}"));
                };
                // Skipped as one run of bytes: the file size is the only bound needed.
                let len = self.u64()?;
                let bytes = self.fits(len.checked_mul(size), || {
                    format!("array of {len} {size}-byte items")
                })?;
                self.skip(bytes)
            }
        }
    }
}

fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        ty::U8 | ty::I8 | ty::BOOL => 1,
        ty::U16 | ty::I16 => 2,
        ty::U32 | ty::I32 | ty::F32 => 4,
        ty::U64 | ty::I64 | ty::F64 => 8,
        _ => return None,
    })
}

/// Parses the header of a file of `len` bytes read from `inner`.
fn parse(inner: impl Read, len: u64) -> Result2<GgufMetadata> {
    let mut r = Reader { inner, left: len };
    if &r.bytes::<4>()? != MAGIC {
        return invalid("not a GGUF file (bad magic)");
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return invalid(format!("unsupported GGUF version {version}"));
    }
    let tensor_count = r.count("tensor", MIN_TENSOR_BYTES)?;
    let kv_count = r.count("key/value", MIN_KV_BYTES)?;

    let mut meta = GgufMetadata::default();
    let mut file_type = None;
    // Context length is keyed by architecture, which may come after it.
    let mut context_lengths: Vec<(String, u64)> = Vec::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let t = r.u32()?;
        let wanted = matches!(
            key.as_str(),
            "general.architecture" | "general.name" | "tokenizer.chat_template"
        );
        let value = r.value(t, wanted).map_err(|e| match e {
            ParseError::Invalid(m) => ParseError::Invalid(format!("key {:?}: {m}", short(&key))),
            io => io,
        })?;
        match (key.as_str(), value) {
            ("general.architecture", Value::Str(s)) => meta.architecture = Some(s),
            ("general.name", Value::Str(s)) => meta.name = Some(s),
            ("tokenizer.chat_template", Value::Str(s)) => meta.chat_template = Some(s),
            ("general.parameter_count", Value::Int(n)) => {
                meta.parameter_count = u64::try_from(n).ok();
            }
            ("general.file_type", Value::Int(n)) => file_type = Some(n),
            (k, Value::Int(n)) if k.ends_with(".context_length") => {
                if let (Some(arch), Ok(n)) = (k.strip_suffix(".context_length"), u64::try_from(n)) {
                    context_lengths.push((arch.to_owned(), n));
                }
            }
            _ => {}
        }
    }
    meta.context_length = meta.architecture.as_ref().and_then(|arch| {
        context_lengths
            .iter()
            .find(|(a, _)| a == arch)
            .map(|(_, n)| *n)
    });
    meta.quantization = file_type.map(file_type_name);

    if meta.parameter_count.is_none() {
        let mut total: u64 = 0;
        for _ in 0..tensor_count {
            let name_len = r.string_len()?;
            r.skip(name_len)?;
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                return invalid(format!("tensor with {n_dims} dimensions"));
            }
            let mut elements: u64 = 1;
            for _ in 0..n_dims {
                elements = elements.saturating_mul(r.u64()?);
            }
            r.skip(4 + 8)?; // tensor type, data offset
            total = total.saturating_add(elements);
        }
        meta.parameter_count = Some(total);
    }
    Ok(meta)
}

/// A key as quoted in an error message: the file chooses it, so at most 64 characters.
fn short(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_owned(),
    }
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
fn file_type_name(n: i128) -> String {
    let name = match n {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("file_type {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A tiny synthetic GGUF: a few keys, a string array to skip, two tensors.
    fn sample(with_param_count: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes()); // tensors
        let kvs = if with_param_count { 6u64 } else { 5 };
        b.extend_from_slice(&kvs.to_le_bytes());
        put_str(&mut b, "tiny.context_length");
        b.extend_from_slice(&ty::U32.to_le_bytes());
        b.extend_from_slice(&4096u32.to_le_bytes());
        put_str(&mut b, "general.architecture");
        b.extend_from_slice(&ty::STRING.to_le_bytes());
        put_str(&mut b, "tiny");
        put_str(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&ty::ARRAY.to_le_bytes());
        b.extend_from_slice(&ty::STRING.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        for t in ["a", "bb", "ccc"] {
            put_str(&mut b, t);
        }
        put_str(&mut b, "tokenizer.ggml.scores");
        b.extend_from_slice(&ty::ARRAY.to_le_bytes());
        b.extend_from_slice(&ty::F32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        put_str(&mut b, "general.file_type");
        b.extend_from_slice(&ty::U32.to_le_bytes());
        b.extend_from_slice(&15u32.to_le_bytes());
        if with_param_count {
            put_str(&mut b, "general.parameter_count");
            b.extend_from_slice(&ty::U64.to_le_bytes());
            b.extend_from_slice(&999u64.to_le_bytes());
        }
        for (name, dims) in [("w1", vec![4u64, 8]), ("w2", vec![10u64])] {
            put_str(&mut b, name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
        }
        b
    }

    fn parse_bytes(b: &[u8]) -> Result2<GgufMetadata> {
        parse(b, b.len() as u64)
    }

    /// A GGUF header without tensors: magic, version, counts (24 bytes).
    fn header(kv_count: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&kv_count.to_le_bytes());
        b
    }

    /// A GGUF header with one key/value: `key`, of type `t`, then `value` (raw bytes).
    fn kv(key: &str, t: u32, value: &[u8]) -> Vec<u8> {
        let mut b = header(1);
        put_str(&mut b, key);
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    fn one_kv(t: u32, value: &[u8]) -> Vec<u8> {
        kv("evil", t, value)
    }

    /// The message of an `Invalid` error; panics on anything else.
    fn invalid_message(result: Result2<GgufMetadata>) -> String {
        match result {
            Err(ParseError::Invalid(m)) => m,
            other => panic!("expected an invalid-file error, got {other:?}"),
        }
    }

    /// Arrays nested `depth` deep, one item each, around one u8.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut value = Vec::with_capacity(depth * 12 + 16);
        for _ in 1..depth {
            value.extend_from_slice(&ty::ARRAY.to_le_bytes());
            value.extend_from_slice(&1u64.to_le_bytes());
        }
        value.extend_from_slice(&ty::U8.to_le_bytes());
        value.extend_from_slice(&1u64.to_le_bytes());
        value.push(7);
        one_kv(ty::ARRAY, &value)
    }

    #[test]
    fn parses_synthetic_header() {
        let m = parse_bytes(&sample(false)).unwrap();
        assert_eq!(m.architecture.as_deref(), Some("tiny"));
        assert_eq!(m.context_length, Some(4096));
        assert_eq!(m.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(m.parameter_count, Some(42));
        assert_eq!(m.name, None);
    }

    #[test]
    fn prefers_declared_parameter_count() {
        let m = parse_bytes(&sample(true)).unwrap();
        assert_eq!(m.parameter_count, Some(999));
    }

    #[test]
    fn rejects_bad_magic_version_and_truncation() {
        assert!(matches!(
            parse_bytes(b"GGML\x03\0\0\0"),
            Err(ParseError::Invalid(_))
        ));
        let mut v1 = sample(false);
        v1[4] = 1;
        assert!(matches!(parse_bytes(&v1), Err(ParseError::Invalid(_))));
        let full = sample(false);
        // Cut after the counts: the two tensors and five keys no longer fit.
        let m = invalid_message(parse_bytes(&full[..30]));
        assert!(
            m.contains("tensor count 2 does not fit in the 14 bytes left"),
            "{m}"
        );
        // Shorter than its size said (shrunk while being read): truncated.
        let len = full.len() as u64;
        assert!(matches!(parse(&full[..40], len), Err(ParseError::Io(_))));
        assert!(is_gguf(&full));
        assert!(!is_gguf(b"GGU"));
    }

    #[test]
    fn one_level_arrays_still_parse() {
        let mut strings = ty::STRING.to_le_bytes().to_vec();
        strings.extend_from_slice(&2u64.to_le_bytes());
        put_str(&mut strings, "a");
        put_str(&mut strings, "bc");
        assert!(parse_bytes(&one_kv(ty::ARRAY, &strings)).is_ok());
        assert!(parse_bytes(&nested_arrays(1)).is_ok());
    }

    #[test]
    fn refuses_nested_arrays_without_recursing() {
        let file = nested_arrays(100_000);
        assert!(file.len() > 1_000_000);
        // A small stack: parsing must not grow with the nesting the file declares.
        let m = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || invalid_message(parse_bytes(&file)))
            .unwrap()
            .join()
            .expect("parsing a deeply nested file does not crash");
        assert!(m.contains("nested array"), "{m}");
        assert!(m.contains("\"evil\""), "the message names the key: {m}");
        let m = invalid_message(parse_bytes(&nested_arrays(2)));
        assert!(m.contains("nested array"), "{m}");
    }

    #[test]
    fn refuses_arrays_longer_than_the_file() {
        for item in [ty::U8, ty::U32, ty::F64, ty::STRING] {
            let mut value = item.to_le_bytes().to_vec();
            value.extend_from_slice(&(1u64 << 40).to_le_bytes());
            value.extend_from_slice(&[0u8; 64]);
            let m = invalid_message(parse_bytes(&one_kv(ty::ARRAY, &value)));
            assert!(
                m.contains("does not fit in the 64 bytes left"),
                "{item}: {m}"
            );
        }
        // Within MAX_COUNT but still more than the file holds.
        let mut value = ty::U64.to_le_bytes().to_vec();
        value.extend_from_slice(&1000u64.to_le_bytes());
        value.extend_from_slice(&[0u8; 800]);
        let m = invalid_message(parse_bytes(&one_kv(ty::ARRAY, &value)));
        assert!(m.contains("array of 1000 8-byte items"), "{m}");
    }

    #[test]
    fn refuses_strings_longer_than_the_file() {
        // A kept string (allocated if believed) and a skipped one.
        for key in ["general.name", "evil"] {
            let mut value = (1u64 << 20).to_le_bytes().to_vec();
            value.extend_from_slice(b"short");
            let m = invalid_message(parse_bytes(&kv(key, ty::STRING, &value)));
            assert!(
                m.contains("string of 1048576 bytes does not fit in the 5 bytes left"),
                "{m}"
            );
        }
        // A key whose own declared length is larger than the file.
        let mut b = header(1);
        b.extend_from_slice(&(1u64 << 20).to_le_bytes());
        b.extend_from_slice(&[b'k'; 20]);
        let m = invalid_message(parse_bytes(&b));
        assert!(
            m.contains("string of 1048576 bytes does not fit in the 20 bytes left"),
            "{m}"
        );
    }

    #[test]
    fn refuses_counts_larger_than_the_file() {
        let mut b = one_kv(ty::U8, &[1]);
        b[16..24].copy_from_slice(&1000u64.to_le_bytes()); // key/values
        let m = invalid_message(parse_bytes(&b));
        assert!(m.contains("key/value count 1000 does not fit"), "{m}");
        let mut b = one_kv(ty::U8, &[1]);
        b[8..16].copy_from_slice(&1000u64.to_le_bytes()); // tensors
        let m = invalid_message(parse_bytes(&b));
        assert!(m.contains("tensor count 1000 does not fit"), "{m}");
    }

    #[test]
    fn read_metadata_reports_hostile_files_as_invalid_models() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.gguf");
        std::fs::write(&path, nested_arrays(100_000)).unwrap();
        match read_metadata(&path) {
            Err(EngineError::InvalidModel(m)) => assert!(m.contains("nested array"), "{m}"),
            other => panic!("expected InvalidModel, got {other:?}"),
        }
    }
}
