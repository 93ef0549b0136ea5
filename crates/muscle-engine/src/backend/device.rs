//! What a user may ask for as the device: `cpu`, `cuda` (GPU 0), `cuda:N` (GPU N, as the driver
//! numbers them: after `CUDA_VISIBLE_DEVICES`), or `auto` (GPU 0 when there is one). One parser,
//! so that the binding and the benchmark accept the same words.

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Gpu(usize),
    Auto,
}

/// The words accepted, for messages.
pub const DEVICE_WORDS: &str = "cpu, cuda, cuda:N (GPU N, from 0), auto";

impl DeviceChoice {
    pub fn parse(word: &str) -> Result<Self, String> {
        let bad = || format!("device `{word}` is not one of {DEVICE_WORDS}");
        Ok(match word {
            "cpu" => DeviceChoice::Cpu,
            "auto" => DeviceChoice::Auto,
            "cuda" => DeviceChoice::Gpu(0),
            _ => {
                let n = word.strip_prefix("cuda:").ok_or_else(bad)?;
                // digits only: Rust's parse would also take "+1"; no leading zeros ("cuda:01")
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
                    return Err(bad());
                }
                DeviceChoice::Gpu(n.parse().map_err(|_| bad())?)
            }
        })
    }

    /// The GPU checked against the count the driver reports (`Cuda::with_precision` does, so the
    /// binding and the benchmark say the same): `Err` says which exist.
    pub fn check_gpu(word: &str, ordinal: usize, count: usize) -> Result<usize, String> {
        if ordinal < count {
            return Ok(ordinal);
        }
        let which = if count == 1 { "GPU (cuda:0)".to_string() } else { format!("GPUs (cuda:0 to cuda:{})", count - 1) };
        Err(format!("device `{word}`: the NVIDIA driver reports {count} {which}; pick one of them \
                     (CUDA_VISIBLE_DEVICES renumbers them from 0)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_device_words() {
        assert_eq!(DeviceChoice::parse("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Gpu(0)));
        assert_eq!(DeviceChoice::parse("cuda:0"), Ok(DeviceChoice::Gpu(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Gpu(3)));
        assert_eq!(DeviceChoice::parse("cuda:12"), Ok(DeviceChoice::Gpu(12)));
        for bad in ["gpu", "", "cuda:", "cuda:-1", "cuda:+1", "cuda:01", "cuda:1 ", "CUDA", "cuda:x", "cuda:99999999999999999999999"] {
            let e = DeviceChoice::parse(bad).unwrap_err();
            assert_eq!(e, format!("device `{bad}` is not one of cpu, cuda, cuda:N (GPU N, from 0), auto"));
        }
    }

    #[test]
    fn names_the_gpus_there_are() {
        assert_eq!(DeviceChoice::check_gpu("cuda:1", 1, 2), Ok(1));
        assert_eq!(DeviceChoice::check_gpu("cuda:2", 2, 2).unwrap_err(),
                   "device `cuda:2`: the NVIDIA driver reports 2 GPUs (cuda:0 to cuda:1); pick one of them (CUDA_VISIBLE_DEVICES renumbers them from 0)");
        assert_eq!(DeviceChoice::check_gpu("cuda:1", 1, 1).unwrap_err(),
                   "device `cuda:1`: the NVIDIA driver reports 1 GPU (cuda:0); pick one of them (CUDA_VISIBLE_DEVICES renumbers them from 0)");
    }
}
