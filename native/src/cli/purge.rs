//! `larder purge`: invalidate answers by pattern, namespace, tag or model.

use std::process::ExitCode;

use clap::{ArgGroup, Args};
use serde_json::json;

use super::{ConnectArgs, print_json};

/// Arguments of `larder purge`: exactly one of `--pattern`, `--namespace`, `--tag`,
/// `--model`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["pattern", "namespace", "tag", "model"])))]
pub struct PurgeArgs {
    /// Delete the answers whose key, after `{prefix}:cache:`, matches this glob (`*`, `?`,
    /// `[…]`), scanning every master. Quote it in the shell.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Invalidate a namespace in O(1) (its generation is bumped; old answers expire later).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Invalidate every answer stored with this tag (lazily: one write).
    #[arg(long)]
    pub tag: Option<String>,
    /// Invalidate every answer of requests for this model (lazily: one write).
    #[arg(long)]
    pub model: Option<String>,
    /// Where the cache is.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(super) async fn run(args: PurgeArgs) -> Result<ExitCode, String> {
    let c = args.connect.connect().await?;
    let cache = &c.cache;
    let doc = if let Some(p) = &args.pattern {
        let n = cache
            .purge_pattern(p)
            .await
            .map_err(|e| format!("--pattern {p:?}: {e}"))?;
        (
            json!({"pattern": p, "deleted": n}),
            format!("deleted {n} answers matching {p:?}"),
        )
    } else if let Some(ns) = &args.namespace {
        let g = cache
            .invalidate_namespace(ns)
            .await
            .map_err(|e| format!("--namespace {ns:?}: {e}"))?;
        (
            json!({"namespace": ns, "generation": g}),
            format!("namespace {ns:?} invalidated (generation {g})"),
        )
    } else if let Some(tag) = &args.tag {
        cache
            .invalidate_tag(tag)
            .await
            .map_err(|e| format!("--tag {tag:?}: {e}"))?;
        (
            json!({"tag": tag, "invalidated": true}),
            format!("tag {tag:?} invalidated"),
        )
    } else if let Some(model) = &args.model {
        cache
            .invalidate_model(model)
            .await
            .map_err(|e| format!("--model {model:?}: {e}"))?;
        (
            json!({"model": model, "invalidated": true}),
            format!("answers of model {model:?} invalidated"),
        )
    } else {
        return Err("say what to purge: --pattern, --namespace, --tag or --model".into());
    };
    if args.connect.json {
        print_json(&doc.0);
    } else {
        println!("{}", doc.1);
    }
    Ok(ExitCode::SUCCESS)
}
