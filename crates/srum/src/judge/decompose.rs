//! Splitting a compositional prompt into yes/no questions, VQAScore-style.
//!
//! "a red circle left of two blue squares" becomes the object questions "Is there a red circle
//! in the image?", "Is there two blue squares in the image?" and the relation question "Is the
//! red circle left of the two blue squares?". The split is by the connectives `and`, `,` and
//! the spatial phrases below; it is a heuristic for short compositional prompts (the
//! T2I-CompBench style), and users with richer prompts bring their own [`Decomposer`].

/// Spatial phrases recognised between two noun phrases, longest first.
const RELATIONS: [&str; 8] = [
    "on the left of",
    "on the right of",
    "to the left of",
    "to the right of",
    "left of",
    "right of",
    "above",
    "below",
];

/// The questions about one prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decomposition {
    /// Noun phrases the image should contain ("a red circle").
    pub objects: Vec<String>,
    /// `(subject, relation, object)` triples.
    pub relations: Vec<(String, String, String)>,
}

impl Decomposition {
    /// "Is there {object} in the image?" for each object.
    pub fn object_questions(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| format!("Is there {o} in the image?"))
            .collect()
    }

    /// "Is {subject} {relation} {object}?" for each relation, articles made definite.
    pub fn relation_questions(&self) -> Vec<String> {
        self.relations
            .iter()
            .map(|(s, r, o)| format!("Is {} {r} {}?", definite(s), definite(o)))
            .collect()
    }
}

fn definite(np: &str) -> String {
    for a in ["a ", "an ", "one "] {
        if let Some(rest) = np.strip_prefix(a) {
            return format!("the {rest}");
        }
    }
    format!("the {np}")
}

/// Turns a prompt into yes/no questions.
pub trait Decomposer {
    /// The objects and relations a prompt asks for.
    fn decompose(&self, prompt: &str) -> Decomposition;
}

/// The built-in heuristic decomposer (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimpleDecomposer;

impl Decomposer for SimpleDecomposer {
    fn decompose(&self, prompt: &str) -> Decomposition {
        let text = prompt.trim().trim_end_matches('.').to_lowercase();
        let mut d = Decomposition::default();
        for clause in text.split([',', ';']).flat_map(|c| c.split(" and ")) {
            let clause = clause.trim();
            if clause.is_empty() {
                continue;
            }
            let rel = RELATIONS
                .iter()
                .filter_map(|r| clause.find(&format!(" {r} ")).map(|p| (p, *r)))
                .min_by_key(|(p, r)| (*p, std::cmp::Reverse(r.len())));
            match rel {
                Some((p, r)) => {
                    let (s, o) = (clause[..p].trim(), clause[p + r.len() + 2..].trim());
                    for np in [s, o] {
                        if !np.is_empty() && !d.objects.iter().any(|x| x == np) {
                            d.objects.push(np.to_string());
                        }
                    }
                    if !s.is_empty() && !o.is_empty() {
                        d.relations
                            .push((s.to_string(), r.to_string(), o.to_string()));
                    }
                }
                None => {
                    if !d.objects.iter().any(|x| x == clause) {
                        d.objects.push(clause.to_string());
                    }
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_and_relations() {
        let d = SimpleDecomposer
            .decompose("A red circle left of two blue squares and a green triangle.");
        assert_eq!(
            d.objects,
            vec!["a red circle", "two blue squares", "a green triangle"]
        );
        assert_eq!(
            d.relations,
            vec![(
                "a red circle".into(),
                "left of".into(),
                "two blue squares".into()
            )]
        );
        assert_eq!(
            d.relation_questions(),
            vec!["Is the red circle left of the two blue squares?"]
        );
        let d = SimpleDecomposer.decompose("a cat on the left of a dog");
        assert_eq!(d.relations[0].1, "on the left of");
    }
}
