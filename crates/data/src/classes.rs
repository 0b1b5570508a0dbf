//! Class names that ship with `gen`: Fashion-MNIST's ten and ImageNet's thousand (ILSVRC-2012 order,
//! the WordNet synonyms of each class, `classes/imagenet.txt`), so a class id prints as a name and a
//! name (`--prompt`) resolves to an id.

use crate::fmnist::CLASS_NAMES;

const IMAGENET: &str = include_str!("../../../classes/imagenet.txt");

/// ImageNet's 1,000 classes in id order; each entry lists its synonyms, comma-separated.
pub fn imagenet() -> Vec<String> {
    IMAGENET.lines().map(str::to_owned).collect()
}

pub fn fashion_mnist() -> Vec<String> {
    CLASS_NAMES.iter().map(|s| s.to_string()).collect()
}

/// The names of a model with `n` classes that does not say: ImageNet's for 1,000 (every official
/// checkpoint); otherwise none (a guess would print wrong names).
pub fn default_for(n: usize) -> Option<Vec<String>> {
    (n == 1000).then(imagenet)
}

/// The first synonym: "golden retriever" for ImageNet class 207.
pub fn short_name(name: &str) -> &str {
    name.split(',').next().unwrap_or(name).trim()
}

/// The class a free-text prompt names: an exact synonym (case-insensitive) first, then the synonym that
/// contains the prompt or the best Jaro-Winkler similarity (`strsim`). Returns (class, score in [0, 1]).
pub fn resolve(prompt: &str, names: &[String]) -> Option<(usize, f64)> {
    let p = prompt.trim().to_lowercase();
    if p.is_empty() {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, name) in names.iter().enumerate() {
        for syn in name.split(',').map(|s| s.trim().to_lowercase()) {
            let score = if syn == p {
                2.0
            } else if syn.contains(&p) || p.contains(&syn) {
                1.0 + strsim::jaro_winkler(&syn, &p) / 2.0
            } else {
                strsim::jaro_winkler(&syn, &p)
            };
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
        }
    }
    best.map(|(i, s)| (i, s.min(2.0) / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_names_in_order() {
        let n = imagenet();
        assert_eq!(n.len(), 1000);
        assert_eq!(short_name(&n[207]), "golden retriever");
        assert_eq!(short_name(&n[0]), "tench");
        assert_eq!(short_name(&n[999]), "toilet tissue");
        assert_eq!(default_for(1000).unwrap().len(), 1000);
        assert!(default_for(10).is_none());
    }

    #[test]
    fn prompts_resolve_exactly_by_substring_and_fuzzily() {
        let n = imagenet();
        assert_eq!(resolve("Golden Retriever", &n).unwrap(), (207, 1.0));
        assert_eq!(resolve("alsatian", &n).unwrap().0, 235); // a synonym of German shepherd
        assert_eq!(resolve("goldn retreiver", &n).unwrap().0, 207);
        let f = fashion_mnist();
        assert_eq!(resolve("sneakers", &f).unwrap().0, 7);
        assert_eq!(resolve("boot", &f).unwrap().0, 9);
        assert!(resolve("  ", &f).is_none());
    }
}
