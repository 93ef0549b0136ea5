//! Memory-mapped safetensors checkpoints, single file or sharded with `model.safetensors.index.json`.
//! Pickle checkpoints are refused: loading them can execute arbitrary code.

use crate::error::{EngineError, Result};
use ::safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A shard's bytes: memory-mapped from disk, or owned (checkpoints built in memory).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

struct Shard {
    path: PathBuf,
    map: Bytes,
    header_len: usize,
    meta: Metadata,
}

/// The tensors of one checkpoint, read lazily from their memory maps.
pub struct Weights {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
}

const PICKLE_NAMES: [&str; 4] = ["pytorch_model.bin", "model.bin", "model.pt", "pytorch_model.bin.index.json"];

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`,
    /// or a `.safetensors` file given directly.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::from_files(&[path.to_path_buf()]);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::from_files(&[single]);
        }
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::CorruptSafetensors {
                path: index.clone(),
                reason: format!("index is not JSON: {e}"),
            })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| EngineError::Config {
                path: index.clone(),
                field: "weight_map".into(),
                reason: "missing or not an object".into(),
            })?;
            let files: std::collections::BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            let files: Vec<PathBuf> = files.into_iter().map(|f| path.join(f)).collect();
            return Self::from_files(&files);
        }
        for name in PICKLE_NAMES {
            let p = path.join(name);
            if p.exists() {
                return Err(EngineError::PickleCheckpoint { file: name.to_string(), path: p });
            }
        }
        Err(EngineError::Missing { path: single, what: "model weights (model.safetensors or model.safetensors.index.json)" })
    }

    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "bin" || ext == "pt" || ext == "pth" || ext == "ckpt" {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                return Err(EngineError::PickleCheckpoint { path: path.clone(), file });
            }
            let f = File::open(path).map_err(|e| EngineError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint modified while training is a user error
            // that at worst yields wrong numbers, as with any reader.
            let map = Bytes::Mapped(unsafe { Mmap::map(&f) }.map_err(|e| EngineError::io(path, e))?);
            Self::add_shard(&mut shards, &mut index, path.clone(), map)?;
        }
        Ok(Weights { shards, index })
    }

    /// A checkpoint held in memory (benchmarks and tests build random models this way, through
    /// the same loading path as files).
    pub fn from_tensors(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Self> {
        let bytes = serialize(tensors, None)?;
        let (mut shards, mut index) = (Vec::new(), HashMap::new());
        Self::add_shard(&mut shards, &mut index, PathBuf::from("(in memory)"), Bytes::Owned(bytes))?;
        Ok(Weights { shards, index })
    }

    fn add_shard(shards: &mut Vec<Shard>, index: &mut HashMap<String, usize>, path: PathBuf, map: Bytes) -> Result<()> {
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| EngineError::CorruptSafetensors {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Validate every tensor's extent now, so later reads cannot fail half-way through loading.
        let data_len = map.len() - 8 - header_len;
        for (name, info) in meta.tensors() {
            if info.data_offsets.1 > data_len {
                return Err(EngineError::CorruptSafetensors {
                    path: path.clone(),
                    reason: format!("tensor `{name}` extends past the end of the file (truncated download?)"),
                });
            }
            index.insert(name, shards.len());
        }
        shards.push(Shard { path, map, header_len, meta });
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.index.get(name)?];
        shard.meta.info(name).map(|i| i.shape.clone())
    }

    /// Reads `name` as f32 (converting F16/BF16), checking its shape against `expected`.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let Some(&si) = self.index.get(name) else {
            return Err(EngineError::MissingTensor {
                path: self.shards[0].path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            });
        };
        let shard = &self.shards[si];
        let info = shard.meta.info(name).expect("indexed tensor has metadata");
        if info.shape != expected {
            return Err(EngineError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let start = 8 + shard.header_len;
        let bytes = &shard.map[start + info.data_offsets.0..start + info.data_offsets.1];
        decode(bytes, info.dtype).ok_or_else(|| EngineError::UnsupportedDtype {
            path: shard.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })
    }
}

fn decode(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    })
}

fn serialize(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (shape, data))| (k.clone(), data.iter().flat_map(|x| x.to_le_bytes()).collect(), shape.clone()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| (k.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view")))
        .collect();
    ::safetensors::serialize(views, &metadata).map_err(|e| EngineError::Other(format!("serialising tensors: {e}")))
}

/// Writes f32 tensors (name -> (shape, data)) to `path` atomically: a temporary file in the same
/// directory, then a rename, so a crash never leaves a half-written checkpoint.
pub fn save(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
            metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = serialize(tensors, metadata)?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("muscle-st-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_shape_check() {
        let d = tmpdir("rt");
        let mut t = BTreeMap::new();
        t.insert("a.weight".to_string(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        save(&d.join("model.safetensors"), &t, None).unwrap();
        let w = Weights::open(&d).unwrap();
        assert_eq!(w.get("a.weight", &[2, 3]).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = w.get("a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("has shape [2, 3], expected [3, 2]"), "{e}");
        let e = w.get("b", &[1]).unwrap_err().to_string();
        assert!(e.contains("tensor `b` is missing"), "{e}");
    }

    #[test]
    fn refuses_pickle_and_reports_corruption() {
        let d = tmpdir("pk");
        std::fs::write(d.join("pytorch_model.bin"), b"not really").unwrap();
        let e = Weights::open(&d).err().unwrap().to_string();
        assert!(e.contains("pickle checkpoints") && e.contains("save_file"), "{e}");
        std::fs::write(d.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
        let e = Weights::open(&d).err().unwrap().to_string();
        assert!(e.contains("not a valid safetensors file"), "{e}");
        let e = Weights::open(&d.join("nothing-here")).err().unwrap().to_string();
        assert!(e.contains("file not found"), "{e}");
    }

    #[test]
    fn truncated_file_is_reported() {
        let d = tmpdir("tr");
        let mut t = BTreeMap::new();
        t.insert("x".to_string(), (vec![64], vec![0.5; 64]));
        let p = d.join("model.safetensors");
        save(&p, &t, None).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = Weights::open(&d).err().unwrap().to_string();
        assert!(e.contains("not a valid safetensors") || e.contains("truncated"), "{e}");
    }
}
