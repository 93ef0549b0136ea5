//! BERT/RoBERTa embeddings: word + position + token type, summed (layer norm and dropout follow
//! in the model). Position ids follow each family's rule.

use crate::backend::Backend;

/// BERT: positions 0..t in every row. RoBERTa: `padding_idx + 1 + cumulative count` of non-padding
/// tokens, padding tokens at `padding_idx` (transformers' `create_position_ids_from_input_ids`).
pub fn position_ids(ids: &[i32], b: usize, t: usize, roberta_pad: Option<i32>) -> Vec<i32> {
    let mut pos = vec![0i32; b * t];
    for bi in 0..b {
        let mut count = 0;
        for ti in 0..t {
            pos[bi * t + ti] = match roberta_pad {
                None => ti as i32,
                Some(pad) => {
                    if ids[bi * t + ti] != pad {
                        count += 1;
                        pad + count
                    } else {
                        pad
                    }
                }
            };
        }
    }
    pos
}

#[allow(clippy::too_many_arguments)]
pub fn embedding_forward<B: Backend>(be: &B, out: &mut B::Buf, word: &B::Buf, pos: &B::Buf, typ: &B::Buf,
                                     ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize) {
    be.embedding_forward(out, word, pos, typ, ids, pos_ids, type_ids, h);
}

/// Scatter-adds `dout` into the tables that train (the caller zeroes them first); padding rows
/// named in `skip` (word, position, type) get no gradient, as `nn.Embedding(padding_idx)`.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward<B: Backend>(be: &B, dword: Option<&mut B::Buf>, dpos: Option<&mut B::Buf>,
                                      dtyp: Option<&mut B::Buf>, dout: &B::Buf, ids: &[i32], pos_ids: &[i32],
                                      type_ids: &[i32], h: usize, skip: [Option<i32>; 3]) {
    be.embedding_backward(dword, dpos, dtyp, dout, ids, pos_ids, type_ids, h, skip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn roberta_positions_skip_padding() {
        // pad id 1: positions start at 2, padding stays at 1
        assert_eq!(position_ids(&[0, 5, 2, 1, 1], 1, 5, Some(1)), vec![2, 3, 4, 1, 1]);
        assert_eq!(position_ids(&[0, 5, 2, 1], 2, 2, None), vec![0, 1, 0, 1]);
    }

    #[test]
    fn gradcheck_embedding() {
        let be = Cpu::new();
        let (v, p, ty, h) = (7, 5, 2, 4);
        let ids = [3, 1, 3, 6, 0, 2];
        let pos = position_ids(&ids, 2, 3, None);
        let types = [0, 0, 1, 0, 1, 1];
        let (w, pe, te) = (rand_vec(v * h, 1), rand_vec(p * h, 2), rand_vec(ty * h, 3));
        let gy = rand_vec(ids.len() * h, 4);
        let f = |w: &[f32], pe: &[f32], te: &[f32]| {
            let mut y = vec![0.0; ids.len() * h];
            embedding_forward(&be, &mut y, &w.to_vec(), &pe.to_vec(), &te.to_vec(), &ids, &pos, &types, h);
            y
        };
        let (mut dw, mut dp, mut dt) = (vec![0.0; v * h], vec![0.0; p * h], vec![0.0; ty * h]);
        embedding_backward(&be, Some(&mut dw), Some(&mut dp), Some(&mut dt), &gy, &ids, &pos, &types, h, [None; 3]);
        check("embedding dword", &w, &dw, &gy, |x| f(x, &pe, &te));
        check("embedding dpos", &pe, &dp, &gy, |x| f(&w, x, &te));
        check("embedding dtype", &te, &dt, &gy, |x| f(&w, &pe, x));
        // the padding row of the word table gets nothing
        let mut dw = vec![0.0; v * h];
        embedding_backward(&be, Some(&mut dw), None, None, &gy, &ids, &pos, &types, h, [Some(3), None, None]);
        assert!(dw[3 * h..4 * h].iter().all(|&x| x == 0.0));
        assert!(dw[6 * h..7 * h].iter().any(|&x| x != 0.0));
    }
}
