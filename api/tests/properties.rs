//! Property tests: the parsers never panic, and what they accept is stable.

use proptest::prelude::*;
use tug_api::{labels::Selector, manifest, quantity::Quantity};

proptest! {
    #[test]
    fn manifests_never_panic(text in "\\PC{0,200}") {
        let _ = manifest::load(&text);
    }

    #[test]
    fn yaml_shaped_manifests_never_panic(
        kind in prop::sample::select(vec!["Pod", "Deployment", "Service", "ConfigMap", "Secret", "Namespace", "ReplicaSet"]),
        body in "[a-zA-Z0-9:{}\\[\\], \\n-]{0,120}",
    ) {
        let _ = manifest::load(&format!("apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\n{body}"));
    }

    #[test]
    fn selectors_never_panic(text in "\\PC{0,80}") {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn integer_quantities_are_exact(n in 0u64..1_000_000_000, suffix in prop::sample::select(vec!["", "k", "M", "Ki", "Mi", "Gi", "m"])) {
        let q = Quantity::parse(&format!("{n}{suffix}")).unwrap();
        let mult: u128 = match suffix { "" => 1000, "k" => 1_000_000, "M" => 1_000_000_000, "Ki" => 1_024_000, "Mi" => 1_048_576_000, "Gi" => 1_073_741_824_000, _ => 1 };
        prop_assert_eq!(q.millis(), u128::from(n) * mult);
    }

    #[test]
    fn accepted_configmaps_round_trip(name in "[a-z][a-z0-9-]{0,20}[a-z0-9]", key in "[a-zA-Z0-9._-]{1,20}", value in "\\PC{0,40}") {
        prop_assume!(key != "." && key != "..");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {key.clone(): value}});
        let objs = manifest::load(&cm.to_string()).unwrap();
        let again = manifest::load(&objs[0].to_value().to_string()).unwrap();
        prop_assert_eq!(objs, again);
    }
}
