//! Values with units or a word: sizes (`1GiB`) and counts (`5`, `all`), read from flags and
//! pipeline files alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A size in bytes, written `1GiB`, `512MiB`, `64KiB`, `2GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}` (use KiB, MiB, GiB, ...)"
                ));
            }
        };
        match number.parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(ByteSize((n * scale as f64) as u64)),
            _ => Err(format!("`{s}` is not a positive size such as 1GiB")),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(n) if n > 0 => Ok(ByteSize(n)),
            Repr::Number(_) => Err(serde::de::Error::custom("a size must be positive")),
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A count that may be "all".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Every qualifying item.
    All,
    /// At most this many (at least 1).
    AtMost(usize),
}

impl Count {
    /// The limit as a number, `usize::MAX` for all.
    pub fn limit(self) -> usize {
        match self {
            Count::All => usize::MAX,
            Count::AtMost(n) => n,
        }
    }
}

impl FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Count::All);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1 (or `all`)".into()),
            Ok(n) => Ok(Count::AtMost(n)),
            Err(_) => Err(format!(
                "`{s}` is neither a positive whole number nor `all`"
            )),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::All => s.serialize_str("all"),
            Count::AtMost(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(i64),
            Text(String),
        }
        let parsed = match Repr::deserialize(d)? {
            Repr::Number(n) => n.to_string().parse(),
            Repr::Text(t) => t.parse(),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::All => f.write_str("all"),
            Count::AtMost(n) => write!(f, "{n}"),
        }
    }
}
