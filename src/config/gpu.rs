//! `[models] gpu_layers` and `main_gpu`: how much of each model llama.cpp offloads to a GPU.
//!
//! A GPU backend is chosen at build time (`cargo build --features cuda`, `vulkan` or
//! `metal`, passed through to llama-cpp-2); the CPU build has none, and there every layer
//! stays on the CPU whatever is configured.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether this binary was built with a GPU backend of llama.cpp.
pub const GPU_BACKEND: Option<&str> = if cfg!(feature = "cuda") {
    Some("cuda")
} else if cfg!(feature = "vulkan") {
    Some("vulkan")
} else if cfg!(feature = "metal") {
    Some("metal")
} else {
    None
};

/// llama.cpp addresses at most this many devices (`llama_max_devices()`).
pub const MAX_DEVICES: u32 = 16;

/// Layers offloaded to the GPU: a number (0 = none), or `"all"` in the TOML file and the
/// environment (`INFERNO_MODELS__GPU_LAYERS=all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    All,
    Count(u32),
}

impl GpuLayers {
    /// All layers on a build with a GPU backend, none on the CPU build.
    pub fn build_default() -> Self {
        if GPU_BACKEND.is_some() {
            GpuLayers::All
        } else {
            GpuLayers::Count(0)
        }
    }

    /// The value llama.cpp is given: `u32::MAX` for all (it clamps to the model's layers).
    pub fn llama_value(self) -> u32 {
        match self {
            GpuLayers::All => u32::MAX,
            GpuLayers::Count(n) => n,
        }
    }
}

impl Default for GpuLayers {
    fn default() -> Self {
        Self::build_default()
    }
}

impl fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuLayers::All => f.write_str("all"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for GpuLayers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuLayers::All => serializer.serialize_str("all"),
            GpuLayers::Count(n) => serializer.serialize_u32(*n),
        }
    }
}

const EXPECTED: &str = "a number of layers (0 or more) or \"all\"";

impl<'de> Deserialize<'de> for GpuLayers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GpuLayers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GpuLayers, E> {
                u32::try_from(v)
                    .map(GpuLayers::Count)
                    .map_err(|_| E::custom(format!("{v} layers is too many; use \"all\"")))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GpuLayers, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("expected {EXPECTED}, not {v}"))),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GpuLayers, E> {
                if v.eq_ignore_ascii_case("all") {
                    return Ok(GpuLayers::All);
                }
                v.trim()
                    .parse::<u32>()
                    .map(GpuLayers::Count)
                    .map_err(|_| E::custom(format!("expected {EXPECTED}, not {v:?}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_and_all() {
        let read = |s: &str| serde_json::from_str::<GpuLayers>(s).map_err(|e| e.to_string());
        assert_eq!(read("0"), Ok(GpuLayers::Count(0)));
        assert_eq!(read("33"), Ok(GpuLayers::Count(33)));
        assert_eq!(read("\"all\""), Ok(GpuLayers::All));
        assert_eq!(read("\"12\""), Ok(GpuLayers::Count(12)));
        assert!(read("-1").unwrap_err().contains("or \"all\""));
        assert!(read("\"most\"").unwrap_err().contains("or \"all\""));
        assert!(read("1.5").is_err());
        assert_eq!(serde_json::to_string(&GpuLayers::All).unwrap(), "\"all\"");
        assert_eq!(serde_json::to_string(&GpuLayers::Count(7)).unwrap(), "7");
    }

    #[test]
    fn defaults_to_none_on_the_cpu_build() {
        let want = if GPU_BACKEND.is_some() {
            GpuLayers::All
        } else {
            GpuLayers::Count(0)
        };
        assert_eq!(GpuLayers::default(), want);
    }
}
