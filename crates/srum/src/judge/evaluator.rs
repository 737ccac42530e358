//! `SelfEvaluator`: the model's own understanding scores the images its generator made.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use super::decompose::{Decomposer, SimpleDecomposer};
use super::parse::{parse_global, parse_regions};
use super::proposals::RegionProposer;
use super::templates::JudgeTemplates;
use crate::error::{Result, SrumError};
use crate::image::PixelImage;
use crate::model::Understanding;
use crate::reward::{BBox, Judgement, ScoredRegion};

/// How scores are obtained from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeMode {
    /// Ask the templates' questions and parse the text answers (the reference; default).
    #[default]
    Text,
    /// Ask decomposed yes/no questions and score `P(yes) - P(no)` (needs
    /// [`Understanding::yes_no_probabilities`](crate::model::Understanding::yes_no_probabilities)).
    YesNo,
}

/// Settings of the [`SelfEvaluator`]; defaults follow the reference scorer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelfEvaluatorConfig {
    /// Ask for the global layout score. Default true.
    pub global: bool,
    /// Ask for region scores. Default true.
    pub local: bool,
    /// One whole-image score as a single full-image region instead of proposals. Default false.
    pub sample_level_only: bool,
    /// Regions kept per image, largest first. Default 5.
    pub max_regions: usize,
    /// Extra attempts for an answer that does not parse. Default 3.
    pub max_retries: usize,
    /// Global score when no answer parses. Default 0.0.
    pub default_global: f32,
    /// Scores become +1 (when > 0) or -1. Default false.
    pub binarize: bool,
    /// Let the model drop proposals it finds irrelevant to the prompt (the paper's filter). Default false.
    pub filter_relevance: bool,
    /// Text answers or yes/no probabilities. Default text.
    pub mode: JudgeMode,
    /// The questions.
    pub templates: JudgeTemplates,
}

impl Default for SelfEvaluatorConfig {
    fn default() -> Self {
        Self {
            global: true,
            local: true,
            sample_level_only: false,
            max_regions: 5,
            max_retries: 3,
            default_global: 0.0,
            binarize: false,
            filter_relevance: false,
            mode: JudgeMode::Text,
            templates: JudgeTemplates::default(),
        }
    }
}

/// What the evaluator said about one image, with the raw answers for inspection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JudgeOutput {
    /// The scores.
    pub judgement: Judgement,
    /// The boxes that were asked about (after truncation and filtering).
    pub proposals: Vec<BBox>,
    /// The last raw global (or sample-level) answer.
    pub raw_global: Option<String>,
    /// The last raw region answer.
    pub raw_regions: Option<String>,
    /// Answers that did not parse and were asked again.
    pub retries: usize,
    /// Whether the global score is the default because nothing parsed.
    pub global_defaulted: bool,
}

/// The self-evaluator (stage 1 of SRUM): proposals, questions, parsing, judgements.
pub struct SelfEvaluator<P> {
    /// Settings.
    pub config: SelfEvaluatorConfig,
    /// Where regions come from.
    pub proposer: P,
    /// Prompt to yes/no questions, for [`JudgeMode::YesNo`].
    pub decomposer: Box<dyn Decomposer + Send + Sync>,
}

fn select<B: Backend>(images: &Tensor<B, 4>, idx: &[usize]) -> Tensor<B, 4> {
    let ids: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &images.device());
    images.clone().select(0, ids)
}

impl<P: RegionProposer> SelfEvaluator<P> {
    /// An evaluator with these settings and proposer.
    pub fn new(config: SelfEvaluatorConfig, proposer: P) -> Result<Self> {
        config.templates.validate()?;
        if config.max_regions == 0 && config.local && !config.sample_level_only {
            return Err(SrumError::config(
                "max_regions",
                "must be at least 1 when local scoring is on",
            ));
        }
        Ok(Self {
            config,
            proposer,
            decomposer: Box::new(SimpleDecomposer),
        })
    }

    /// Asks `questions[i]` about image `i` for every `i` in `todo`, re-asking the ones whose
    /// answer `ok` rejects up to `max_retries` times. Returns the last answer for each image.
    fn ask<B: Backend, M: Understanding<B>>(
        &self,
        model: &M,
        images: &Tensor<B, 4>,
        questions: &[String],
        mut todo: Vec<usize>,
        ok: impl Fn(usize, &str) -> bool,
        retries: &mut [usize],
    ) -> Result<Vec<Option<String>>> {
        let mut answers = vec![None; questions.len()];
        for attempt in 0..=self.config.max_retries {
            if todo.is_empty() {
                break;
            }
            let qs: Vec<String> = todo.iter().map(|&i| questions[i].clone()).collect();
            let got = model.answer(select(images, &todo), &qs)?;
            if got.len() != todo.len() {
                return Err(SrumError::Model(format!(
                    "{} answers for {} questions",
                    got.len(),
                    todo.len()
                )));
            }
            let mut again = Vec::new();
            for (&i, a) in todo.iter().zip(got) {
                if !ok(i, &a) {
                    if attempt < self.config.max_retries {
                        retries[i] += 1;
                    }
                    again.push(i);
                }
                answers[i] = Some(a);
            }
            todo = again;
        }
        Ok(answers)
    }

    /// Judges each image against its prompt.
    ///
    /// Shapes: `images`: `[batch, 3, H, W]` in `[0, 1]`; `prompts.len() == batch`.
    pub fn judge<B: Backend, M: Understanding<B>>(
        &self,
        model: &M,
        images: Tensor<B, 4>,
        prompts: &[String],
    ) -> Result<Vec<JudgeOutput>> {
        let [b, _, h, w] = images.dims();
        if prompts.len() != b {
            return Err(SrumError::Shape(format!(
                "{} prompts for {b} images",
                prompts.len()
            )));
        }
        if self.config.mode == JudgeMode::YesNo {
            return self.judge_yes_no(model, images, prompts);
        }
        let cfg = &self.config;
        let t = &cfg.templates;
        let mut out = vec![JudgeOutput::default(); b];
        let mut retries = vec![0usize; b];
        let all: Vec<usize> = (0..b).collect();
        let whole = BBox::new(0.0, 0.0, w as f64, h as f64);

        // One whole-image score per image from `template`, retried until it parses.
        let ask_score = |template: &str, retries: &mut [usize]| {
            let qs: Vec<String> = prompts
                .iter()
                .map(|p| JudgeTemplates::render(template, p, &[], w, h))
                .collect();
            self.ask(
                model,
                &images,
                &qs,
                all.clone(),
                |_, a| parse_global(a).is_some(),
                retries,
            )
        };
        if cfg.global {
            let answers = ask_score(&t.global, &mut retries)?;
            for (o, a) in out.iter_mut().zip(answers) {
                let parsed = a.as_deref().and_then(parse_global);
                o.global_defaulted = parsed.is_none();
                o.judgement.global =
                    Some(parsed.map(|s| s.score as f32).unwrap_or(cfg.default_global));
                o.raw_global = a;
            }
        }

        if cfg.sample_level_only {
            let answers = ask_score(&t.sample, &mut retries)?;
            for (o, a) in out.iter_mut().zip(answers) {
                if let Some(s) = a.as_deref().and_then(parse_global) {
                    o.judgement.regions.push(ScoredRegion {
                        bbox: whole,
                        object: "whole image".into(),
                        score: s.score as f32,
                    });
                }
                o.proposals = vec![whole];
                if !cfg.global {
                    o.raw_global = a;
                }
            }
        } else if cfg.local {
            let pixels = PixelImage::from_tensor(images.clone())?;
            let mut boxes: Vec<Vec<BBox>> = pixels
                .iter()
                .map(|p| {
                    let mut v = self.proposer.propose(p);
                    v.truncate(cfg.max_regions);
                    v
                })
                .collect();
            // Asks `template` about each image's boxes, retried until some region parses.
            let ask_regions = |template: &str, boxes: &[Vec<BBox>], retries: &mut [usize]| {
                let todo: Vec<usize> = (0..b).filter(|&i| !boxes[i].is_empty()).collect();
                let qs: Vec<String> = (0..b)
                    .map(|i| JudgeTemplates::render(template, &prompts[i], &boxes[i], w, h))
                    .collect();
                let n: Vec<usize> = boxes.iter().map(Vec::len).collect();
                self.ask(
                    model,
                    &images,
                    &qs,
                    todo,
                    |i, a| !parse_regions(a, Some(n[i])).is_empty(),
                    retries,
                )
            };
            if cfg.filter_relevance {
                let n: Vec<usize> = boxes.iter().map(Vec::len).collect();
                let answers = ask_regions(&t.relevance, &boxes, &mut retries)?;
                for (i, a) in answers.into_iter().enumerate() {
                    let Some(a) = a else { continue };
                    let verdicts = parse_regions(&a, Some(n[i]));
                    if verdicts.is_empty() {
                        tracing::warn!(
                            image = i,
                            "relevance answer did not parse: all proposals kept"
                        );
                        continue;
                    }
                    // Unmentioned boxes are kept: the filter removes only what it rejects.
                    boxes[i] = boxes[i]
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| verdicts.get(&(k + 1)).is_none_or(|v| v.score.score > 0.0))
                        .map(|(_, b)| *b)
                        .collect();
                }
            }
            let n: Vec<usize> = boxes.iter().map(Vec::len).collect();
            let answers = ask_regions(&t.regions, &boxes, &mut retries)?;
            for (i, a) in answers.into_iter().enumerate() {
                if let Some(a) = &a {
                    for (id, r) in parse_regions(a, Some(n[i])) {
                        out[i].judgement.regions.push(ScoredRegion {
                            bbox: boxes[i][id - 1],
                            object: r.object.unwrap_or_default(),
                            score: r.score.score as f32,
                        });
                    }
                }
                out[i].raw_regions = a;
                out[i].proposals = std::mem::take(&mut boxes[i]);
            }
        }

        for (o, r) in out.iter_mut().zip(retries) {
            o.retries = r;
            if cfg.binarize {
                binarize(&mut o.judgement);
            }
        }
        Ok(out)
    }

    /// VQAScore-style judging from `P(yes) - P(no)` of decomposed questions: the global score
    /// averages the relation questions (the object questions when there are none); each region
    /// scores its best-matching object.
    fn judge_yes_no<B: Backend, M: Understanding<B>>(
        &self,
        model: &M,
        images: Tensor<B, 4>,
        prompts: &[String],
    ) -> Result<Vec<JudgeOutput>> {
        let cfg = &self.config;
        let [b, _, h, w] = images.dims();
        let ask = |idx: Vec<usize>, qs: Vec<String>| -> Result<Vec<f32>> {
            if qs.is_empty() {
                return Ok(Vec::new());
            }
            let probs = model
                .yes_no_probabilities(select(&images, &idx), &qs)
                .ok_or_else(|| {
                    SrumError::config(
                        "mode",
                        "yes/no mode needs a model that exposes yes/no probabilities",
                    )
                })??;
            Ok(probs
                .into_iter()
                .map(|(y, n)| (y - n).clamp(-1.0, 1.0))
                .collect())
        };
        let decomps: Vec<_> = prompts
            .iter()
            .map(|p| self.decomposer.decompose(p))
            .collect();
        let mut out = vec![JudgeOutput::default(); b];
        if cfg.global {
            let (mut idx, mut qs, mut owner) = (Vec::new(), Vec::new(), Vec::new());
            for (i, d) in decomps.iter().enumerate() {
                let mut q = d.relation_questions();
                if q.is_empty() {
                    q = d.object_questions();
                }
                for q in q {
                    idx.push(i);
                    qs.push(q);
                    owner.push(i);
                }
            }
            let scores = ask(idx, qs)?;
            let mut sum = vec![(0f32, 0usize); b];
            for (i, s) in owner.into_iter().zip(scores) {
                sum[i].0 += s;
                sum[i].1 += 1;
            }
            for (o, (s, n)) in out.iter_mut().zip(sum) {
                o.global_defaulted = n == 0;
                o.judgement.global = Some(if n == 0 {
                    cfg.default_global
                } else {
                    s / n as f32
                });
            }
        }
        if cfg.local {
            let pixels = PixelImage::from_tensor(images.clone())?;
            let whole = BBox::new(0.0, 0.0, w as f64, h as f64);
            let (mut idx, mut qs, mut owner) = (Vec::new(), Vec::new(), Vec::new());
            for (i, d) in decomps.iter().enumerate() {
                let boxes = if cfg.sample_level_only {
                    vec![whole]
                } else {
                    let mut v = self.proposer.propose(&pixels[i]);
                    v.truncate(cfg.max_regions);
                    v
                };
                for (k, bx) in boxes.iter().enumerate() {
                    for (j, obj) in d.objects.iter().enumerate() {
                        idx.push(i);
                        qs.push(format!(
                            "Does the region [{}, {}, {}, {}] show {obj}?",
                            bx.x_min, bx.y_min, bx.x_max, bx.y_max
                        ));
                        owner.push((i, k, j));
                    }
                }
                out[i].proposals = boxes;
            }
            let scores = ask(idx, qs)?;
            let mut best: Vec<Vec<Option<(f32, usize)>>> =
                out.iter().map(|o| vec![None; o.proposals.len()]).collect();
            for ((i, k, j), s) in owner.into_iter().zip(scores) {
                if best[i][k].is_none_or(|(b, _)| s > b) {
                    best[i][k] = Some((s, j));
                }
            }
            for (i, o) in out.iter_mut().enumerate() {
                for (k, bst) in best[i].iter().enumerate() {
                    if let Some((s, j)) = bst {
                        o.judgement.regions.push(ScoredRegion {
                            bbox: o.proposals[k],
                            object: decomps[i].objects[*j].clone(),
                            score: *s,
                        });
                    }
                }
            }
        }
        if cfg.binarize {
            out.iter_mut().for_each(|o| binarize(&mut o.judgement));
        }
        Ok(out)
    }
}

fn binarize(j: &mut Judgement) {
    let bin = |s: f32| if s > 0.0 { 1.0 } else { -1.0 };
    j.global = j.global.map(bin);
    j.regions.iter_mut().for_each(|r| r.score = bin(r.score));
}
