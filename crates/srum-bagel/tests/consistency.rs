//! Self-consistency of the three paths on a tiny random model: the packed training forward,
//! the cached prefill and decode, and the cached latent query must agree where BAGEL's
//! masks say they see the same tokens.

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor, TensorData};
use srum_bagel::{BagelConfig, KvCache, PackedSequence};

type B = Flex;

fn tiny() -> BagelConfig {
    BagelConfig::new()
        .with_vocab_size(64)
        .with_hidden_size(32)
        .with_intermediate_size(48)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(4)
        .with_num_key_value_heads(2)
        .with_latent_channel(4)
        .with_max_latent_size(8)
        .with_bos_token_id(1)
        .with_eos_token_id(2)
        .with_start_of_image_id(3)
        .with_end_of_image_id(4)
}

fn max_diff(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
    let a = a.into_data().to_vec::<f32>().unwrap();
    let b = b.into_data().to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn cached_paths_match_the_packed_forward() {
    let device = Default::default();
    let config = tiny();
    let model = config.init::<B>(&device);
    // llm2vae starts at zero; give it values so the velocity comparison means something.
    let model = {
        use burn::module::{Module, ModuleMapper, Param};
        struct Noise;
        impl ModuleMapper<B> for Noise {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                p.map(|t| {
                    let shape = t.shape();
                    t + Tensor::random(shape, Distribution::Normal(0.0, 0.05), &Default::default())
                })
            }
        }
        model.map(&mut Noise)
    };
    let text = model.wrap_text(&[10, 11, 12, 13]);
    let (h, w) = (2, 3);
    let mut seq = PackedSequence::new();
    seq.push_text(&text);
    seq.push_noisy_latents((h, w), 3, 4, config.max_latent_size)
        .unwrap();
    let x_t = Tensor::<B, 2>::random([h * w, 16], Distribution::Normal(0.0, 1.0), &device);
    let t = 0.37f32;
    let ts = Tensor::<B, 1>::from_data(TensorData::new(vec![t; h * w], [h * w]), &device);
    let packed = model.forward_packed(&seq, x_t.clone(), ts, true).unwrap();

    let mut cache = KvCache::new();
    let prefill = model.prefill_text(&mut cache, &text, true).unwrap();
    let n = text.len();
    for (l, (a, b)) in prefill.layers.iter().zip(&packed.hidden.layers).enumerate() {
        let d = max_diff(a.clone(), b.clone().narrow(0, 0, n));
        assert!(d < 1e-5, "layer {l}: {d}");
    }
    let d = max_diff(
        prefill.last.clone(),
        packed.hidden.last.clone().narrow(0, 0, n),
    );
    assert!(d < 1e-5, "final: {d}");

    let v = model.velocity(&cache, x_t, t, (h, w)).unwrap();
    let d = max_diff(v, packed.velocity.clone());
    assert!(d < 1e-5, "velocity: {d}");

    // Decoding one token at a time with the cache gives the logits of the whole sequence.
    let mut all = text.clone();
    let mut cache2 = cache.clone();
    let new = model.greedy(&mut cache2, 1, 3).unwrap();
    let fed = [vec![1], new[..2].to_vec()].concat();
    all.extend_from_slice(&fed);
    let mut full = PackedSequence::new();
    full.push_text(&all);
    let empty = Tensor::<B, 2>::zeros([0, 16], &device);
    let none = Tensor::<B, 1>::zeros([0], &device);
    let out = model.forward_packed(&full, empty, none, false).unwrap();
    let logits = model.logits(out.hidden.last);
    let picks = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();
    for (i, &tok) in new.iter().enumerate() {
        assert_eq!(picks[n + i] as u32, tok, "step {i}");
    }
    let p = model.yes_probability(&cache, 1, 5, 6).unwrap();
    assert!((0.0..=1.0).contains(&p));
}

/// One layer's inference forward (`DecoderLayer::forward_inference`): a prompt, then a noisy
/// latent block after the prompt's cached keys and values, gives the block rows of the packed
/// training forward of `[prompt, block]` (where the block sees the prompt, the prompt not the
/// block); a prefix of the wrong length is refused.
#[test]
fn one_layers_cached_block_matches_its_packed_forward() {
    use srum_bagel::{DecoderLayerConfig, Plan};
    let device = Default::default();
    let config = tiny();
    let layer = DecoderLayerConfig::new(config.clone()).init::<B>(&device);
    let text: Vec<u32> = (10..17).collect();
    let grid = (2, 3);
    let mut packed = PackedSequence::new();
    packed.push_text(&text);
    packed
        .push_noisy_latents(grid, 3, 4, config.max_latent_size)
        .unwrap();
    packed.end_sample();
    let n = packed.len();
    let x = Tensor::<B, 2>::random(
        [n, config.hidden_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let want = layer.forward_train(x.clone(), &Plan::packed(&packed, &config, &device));

    let t = text.len();
    let mut prompt = PackedSequence::new();
    prompt.push_text(&text);
    prompt.end_sample();
    let prompt_plan = Plan::packed(&prompt, &config, &device);
    let (head, kv) = layer
        .forward_inference(x.clone().narrow(0, 0, t), &prompt_plan, None)
        .unwrap();
    let mut block = PackedSequence::new();
    block
        .push_noisy_latents(grid, 3, 4, config.max_latent_size)
        .unwrap();
    let m = block.len();
    let plan = Plan::<B>::block(
        &block.experts(),
        &vec![t as i64; m],
        t,
        false,
        &config,
        &device,
    );
    let (tail, _) = layer
        .forward_inference(x.clone().narrow(0, t, m), &plan, Some(&kv))
        .unwrap();
    assert!(max_diff(head, want.clone().narrow(0, 0, t)) < 1e-5);
    assert!(max_diff(tail, want.narrow(0, t, m)) < 1e-5);

    // The block's plan expects the prompt's 7 cached tokens: none, or the wrong rows, is an error.
    let err = layer
        .forward_inference(x.clone().narrow(0, t, m), &plan, None)
        .unwrap_err();
    assert!(err.to_string().contains("7 cached tokens"), "{err}");
    assert!(
        layer
            .forward_inference(x.narrow(0, 0, t), &plan, Some(&kv))
            .is_err()
    );
}
