//! Cached rig tools: the tool runs once per result its policy keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder::rig::{CachedTool, Session, Tenant};
use larder::tools::{ToolPolicy, ToolScope};
use rig_core::tool::{PortableTool, Tool, ToolContext};
use serde_json::{Value as Json, json};

use crate::{Backend, tool_cache};

#[derive(Debug)]
pub(crate) struct SearchDown;

impl std::fmt::Display for SearchDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the search backend is down")
    }
}

impl std::error::Error for SearchDown {}

/// A search tool that counts its runs; the query "fail" fails.
#[derive(Clone, Debug, Default)]
pub(crate) struct Search {
    runs: Arc<AtomicUsize>,
}

impl Search {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl PortableTool for Search {
    const NAME: &'static str = "web_search";
    type Args = Json;
    type Output = Vec<String>;
    type Error = SearchDown;

    fn description(&self) -> String {
        "Searches the web.".into()
    }

    fn parameters(&self) -> Json {
        json!({"type": "object", "properties": {"q": {"type": "string"}}})
    }

    async fn call(&self, args: Json) -> Result<Vec<String>, SearchDown> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if args["q"] == "fail" {
            return Err(SearchDown);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(vec![
            format!("results for {}", args["q"]),
            format!("run {run}"),
        ])
    }
}

/// The same tool under another name, with the output typed differently.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inbox {
    runs: Arc<AtomicUsize>,
}

impl PortableTool for Inbox {
    const NAME: &'static str = "read_inbox";
    type Args = Json;
    type Output = Json;
    type Error = SearchDown;

    fn description(&self) -> String {
        "Reads the inbox.".into()
    }

    fn parameters(&self) -> Json {
        json!({"type": "object"})
    }

    async fn call(&self, _args: Json) -> Result<Json, SearchDown> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(json!({"unread": run}))
    }
}

const HOUR: Duration = Duration::from_secs(3600);

pub(crate) async fn tool_results_hit_on_the_same_arguments_only(be: &impl Backend) {
    let tools = tool_cache(be, |b| b.policy("web_search", ToolPolicy::cache_for(HOUR)));
    let search = Search::default();
    let cached = CachedTool::new(search.clone(), tools.clone());
    assert_eq!(Tool::description(&cached), "Searches the web.");
    assert_eq!(Tool::parameters(&cached), PortableTool::parameters(&search));
    let mut cx = ToolContext::default();
    let first = Tool::call(&cached, &mut cx, json!({"q": "paris", "n": 3}))
        .await
        .unwrap();
    // The same arguments in another order and spelling: the same call.
    let again = Tool::call(&cached, &mut cx, json!({"n": 3.0, "q": "paris"}))
        .await
        .unwrap();
    assert_eq!(search.runs(), 1);
    assert_eq!(first, again);
    assert_eq!(again[1], "run 1");
    let other = Tool::call(&cached, &mut cx, json!({"q": "rome", "n": 3}))
        .await
        .unwrap();
    assert_eq!((search.runs(), other[1].as_str()), (2, "run 2"));
    let stats = tools.stats()["web_search"];
    assert_eq!((stats.hits, stats.misses), (1, 2));
    // Concurrent identical calls run the tool once.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let cached = cached.clone();
            tokio::spawn(async move {
                let mut cx = ToolContext::default();
                Tool::call(&cached, &mut cx, json!({"q": "together"})).await
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap()[1], "run 3");
    }
    assert_eq!(search.runs(), 3);
}

pub(crate) async fn never_cached_and_unlisted_tools_run_every_time(be: &impl Backend) {
    let tools = tool_cache(be, |b| b.policy("web_search", ToolPolicy::never()));
    let search = Search::default();
    let cached = CachedTool::new(search.clone(), tools.clone());
    let inbox = Inbox::default();
    let unlisted = CachedTool::new(inbox.clone(), tools.clone());
    let mut cx = ToolContext::default();
    for n in 1..=3 {
        let got = Tool::call(&cached, &mut cx, json!({"q": "x"}))
            .await
            .unwrap();
        assert_eq!(got[1], format!("run {n}"));
        let got = Tool::call(&unlisted, &mut cx, json!({})).await.unwrap();
        assert_eq!(got["unread"], n);
    }
    assert_eq!(search.runs(), 3);
    assert_eq!(tools.stats()["web_search"].uncached, 3);
}

pub(crate) async fn scoped_tools_read_their_tenant_from_the_context(be: &impl Backend) {
    let tools = tool_cache(be, |b| {
        b.policy(
            "read_inbox",
            ToolPolicy::cache_for(HOUR).scope(ToolScope::Tenant),
        )
        .policy(
            "web_search",
            ToolPolicy::cache_for(HOUR).scope(ToolScope::Session),
        )
    });
    let inbox = Inbox::default();
    let cached = CachedTool::new(inbox.clone(), tools.clone());
    let context = |tenant: &str| {
        let mut cx = ToolContext::default();
        cx.insert(Tenant(tenant.into())).unwrap();
        cx
    };
    let (mut acme, mut globex) = (context("acme"), context("globex"));
    let a1 = Tool::call(&cached, &mut acme, json!({})).await.unwrap();
    let g1 = Tool::call(&cached, &mut globex, json!({})).await.unwrap();
    let a2 = Tool::call(&cached, &mut acme, json!({})).await.unwrap();
    assert_eq!(
        (a1["unread"].clone(), g1["unread"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(a2, a1, "the tenant's own result");
    // Without a tenant the call cannot be keyed: it runs, uncached, and is not an error.
    let mut nobody = ToolContext::default();
    for n in [3, 4] {
        let got = Tool::call(&cached, &mut nobody, json!({})).await.unwrap();
        assert_eq!(got["unread"], n);
    }
    // Sessions likewise.
    let search = Search::default();
    let cached = CachedTool::new(search.clone(), tools.clone());
    let mut s1 = ToolContext::default();
    s1.insert(Session("s1".into())).unwrap();
    let mut s2 = ToolContext::default();
    s2.insert(Session("s2".into())).unwrap();
    Tool::call(&cached, &mut s1, json!({"q": "q"}))
        .await
        .unwrap();
    Tool::call(&cached, &mut s1, json!({"q": "q"}))
        .await
        .unwrap();
    Tool::call(&cached, &mut s2, json!({"q": "q"}))
        .await
        .unwrap();
    assert_eq!(search.runs(), 2);
}

pub(crate) async fn tool_failures_are_not_stored_and_keep_their_error(be: &impl Backend) {
    let tools = tool_cache(be, |b| b.default_policy(ToolPolicy::cache_for(HOUR)));
    let search = Search::default();
    let cached = CachedTool::new(search.clone(), tools.clone());
    let mut cx = ToolContext::default();
    for n in 1..=2 {
        let err = Tool::call(&cached, &mut cx, json!({"q": "fail"}))
            .await
            .unwrap_err();
        assert!(err.tool_error().is_some(), "{err:?}");
        assert_eq!(err.to_string(), "the search backend is down");
        assert_eq!(search.runs(), n, "a failure is never stored");
        // rig's error normalization is the wrapped tool's, with the tool's own error as
        // the source.
        let mapped = Tool::map_error(&cached, err);
        let direct = PortableTool::map_error(&search, SearchDown);
        assert_eq!(mapped.to_string(), direct.to_string());
        let source = std::error::Error::source(&mapped).expect("a source");
        assert!(source.downcast_ref::<SearchDown>().is_some(), "{source:?}");
    }
    assert_eq!(tools.stats()["web_search"].errors, 2);
    // A stored result that no longer reads as the tool's output (the tool changed its
    // output type): the tool runs, uncached, instead of failing.
    #[derive(Debug)]
    struct Counted;
    impl PortableTool for Counted {
        const NAME: &'static str = "web_search";
        type Args = Json;
        type Output = u64;
        type Error = SearchDown;
        fn description(&self) -> String {
            String::new()
        }
        fn parameters(&self) -> Json {
            json!({})
        }
        async fn call(&self, _args: Json) -> Result<u64, SearchDown> {
            Ok(42)
        }
    }
    Tool::call(&cached, &mut cx, json!({"q": "typed"}))
        .await
        .unwrap();
    let typed = CachedTool::new(Counted, tools.clone());
    let got = Tool::call(&typed, &mut cx, json!({"q": "typed"})).await;
    assert_eq!(got.unwrap(), 42, "the tool ran");
    assert_eq!(
        tools.stats()["web_search"].hits,
        1,
        "the entry was found, not usable"
    );
}
