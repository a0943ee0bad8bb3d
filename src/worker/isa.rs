//! Which instruction-set path the CPU engines' kernels take: the best this CPU has
//! (AVX-512F with FMA, AVX2 with FMA and F16C, or portable code), or the one `MYCELIUM_KERNELS`
//! names (`avx512`, `avx2`, `portable`), so that each path can be measured and tested on
//! any machine that has it. A named path this CPU lacks is refused with a warning, and the
//! best one it has is used.
//!
//! Owns: run-time kernel selection. Reads that one variable; no other I/O.

use std::sync::OnceLock;

/// A kernel path, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs the path.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => {
                    fma && std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("f16c")
                }
                Isa::Avx512 => fma && std::arch::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Every path this CPU runs, portable first.
    pub fn all_here() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// Whether this CPU has AVX-512's byte and VNNI extensions (`vpdpbusd`), which the
/// quantised kernels' AVX-512 path needs beside AVX2.
pub fn vnni_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.available()
            && Isa::Avx2.available()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The best path this CPU runs.
pub fn best_here() -> Isa {
    Isa::all_here().into_iter().max().unwrap_or(Isa::Portable)
}

/// What `MYCELIUM_KERNELS=<value>` selects here: the named path if this CPU runs it,
/// else (with the reason) the best one it has.
pub fn select(value: Option<&str>) -> (Isa, Option<String>) {
    let best = best_here();
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return (best, None);
    };
    match Isa::parse(v) {
        Some(i) if i.available() => (i, None),
        Some(i) => (
            best,
            Some(format!(
                "MYCELIUM_KERNELS={v}: this CPU has no {} path; using {}",
                i.name(),
                best.name()
            )),
        ),
        None => (
            best,
            Some(format!(
                "MYCELIUM_KERNELS={v}: not a kernel path (avx512, avx2 or portable); using {}",
                best.name()
            )),
        ),
    }
}

/// The path the engines use in this process (decided once).
pub fn chosen() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let v = std::env::var("MYCELIUM_KERNELS").ok();
        let (isa, why) = select(v.as_deref());
        if let Some(why) = why {
            tracing::warn!("{why}");
        }
        isa
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_path_is_taken_only_where_the_cpu_has_it() {
        let best = best_here();
        assert_eq!(select(None), (best, None));
        assert_eq!(select(Some("")), (best, None));
        assert_eq!(select(Some("portable")), (Isa::Portable, None));
        assert_eq!(select(Some("SCALAR")), (Isa::Portable, None));
        for i in [Isa::Avx2, Isa::Avx512] {
            let (got, why) = select(Some(i.name()));
            if i.available() {
                assert_eq!((got, why), (i, None));
            } else {
                assert_eq!(got, best);
                assert!(why.is_some_and(|w| w.contains("no ")), "{i:?}");
            }
        }
        let (got, why) = select(Some("sse9"));
        assert_eq!(got, best);
        assert!(why.is_some_and(|w| w.contains("not a kernel path")));
        assert!(Isa::all_here().contains(&Isa::Portable));
    }
}
