//! The Redis keys of the response cache (docs/KEY_FORMAT.md §8).

use crate::keys::KeyScheme;
use crate::keys::concat;

use super::control::DEFAULT_NAMESPACE;

/// The tag every entry carries implicitly: `model:{model}` (so a model's answers can be
/// invalidated with one write).
pub(crate) fn model_tag(model: &str) -> String {
    format!("model:{model}")
}

/// Where the response cache keeps things, under a [`KeyScheme`]'s prefix.
///
/// | what | key |
/// | --- | --- |
/// | an answer, default namespace | `{prefix}:cache:{hash}` |
/// | an answer, namespace `ns` | `{prefix}:cache:{ns}:{hash}` |
/// | a namespace's generation | `{prefix}:ns:{ns}` |
/// | a tag's invalidation time (unix ms) | `{prefix}:tag:{tag}` |
/// | a model's analytics (hash) | `{prefix}:analytics:model:{model}` |
/// | the models with analytics (set) | `{prefix}:analytics:models` |
///
/// Model names and tags are written with `%`, `{` and `}` percent-encoded, so that no key
/// holds a Redis Cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseKeys {
    scheme: KeyScheme,
    head: String,
}

impl ResponseKeys {
    pub(crate) fn new(scheme: KeyScheme) -> Self {
        let head = if scheme.prefix().is_empty() {
            String::new()
        } else {
            format!("{}:", scheme.prefix())
        };
        ResponseKeys { scheme, head }
    }

    pub(crate) fn scheme(&self) -> &KeyScheme {
        &self.scheme
    }

    /// The user key (what follows `{prefix}:cache:`) of a request hash in a namespace.
    pub(crate) fn user_key(namespace: &str, hash: &str) -> String {
        if namespace == DEFAULT_NAMESPACE {
            hash.to_owned()
        } else {
            format!("{namespace}:{hash}")
        }
    }

    pub(crate) fn generation_key(&self, namespace: &str) -> String {
        concat(&[&self.head, "ns:", namespace])
    }

    pub(crate) fn tag_key(&self, tag: &str) -> String {
        concat(&[&self.head, "tag:", &escape(tag)])
    }

    pub(crate) fn analytics_key(&self, model: &str) -> String {
        concat(&[&self.head, "analytics:model:", &escape(model)])
    }

    /// The Redis Stream a leader publishes an in-flight stream on: `{prefix}:live:{user}:{token}`
    /// (its lease token, so a new leader never writes into an old stream).
    pub(crate) fn live_key(&self, user: &str, token: &str) -> String {
        concat(&[&self.head, "live:", user, ":", token])
    }

    pub(crate) fn analytics_models_key(&self) -> String {
        concat(&[&self.head, "analytics:models"])
    }
}

/// Percent-encodes `%`, `{` and `}`.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '{', '}']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = ResponseKeys::new(KeyScheme::new("app").unwrap());
        assert_eq!(ResponseKeys::user_key("default", "ab"), "ab");
        assert_eq!(ResponseKeys::user_key("t-1", "ab"), "t-1:ab");
        assert_eq!(k.generation_key("t-1"), "app:ns:t-1");
        assert_eq!(k.tag_key("docs"), "app:tag:docs");
        assert_eq!(k.tag_key("model:x{y}%"), "app:tag:model:x%7By%7D%25");
        assert_eq!(k.analytics_key("gpt"), "app:analytics:model:gpt");
        assert_eq!(k.analytics_models_key(), "app:analytics:models");
        let bare = ResponseKeys::new(KeyScheme::new("").unwrap());
        assert_eq!(bare.generation_key("default"), "ns:default");
    }
}
