//! Layers as forward/backward pairs over backend buffers. Each forward saves exactly what its
//! backward needs; each backward is checked against finite differences in its tests.

pub mod activation;
pub mod attention;
pub mod decoder_mlp;
pub mod dropout;
pub mod embedding;
pub mod flash_attention;
pub mod layer_norm;
pub mod linear;
pub mod lora;
pub mod mslr;
pub mod rms_norm;
pub mod rope;
pub mod softmax_xent;

#[cfg(test)]
pub(crate) mod gradcheck;
