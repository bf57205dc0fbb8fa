//! What `tc -json` prints of qdiscs and filters, as types: only the fields
//! the queues read, the rest ignored. crate::iproute runs the commands; the
//! fields and their shapes are iproute2 6.1's (the test below holds its
//! output for the filters the queues build, copied from this machine).

use serde::Deserialize;

/// One qdisc of `tc -json qdisc show`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Qdisc {
    /// "htb", "ingress", "clsact", "tbf", ...
    pub kind: String,
    /// "1:", "ffff:", ...
    pub handle: String,
    /// the interface, when the command did not name one
    #[serde(default)]
    pub dev: Option<String>,
}

/// One entry of `tc -json filter show`. tc prints each filter's chain head
/// as an entry without options before the filter itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Filter {
    /// "u32", "bpf", ...
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub options: Option<FilterOptions>,
}

/// The part of a filter that names what it runs and does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FilterOptions {
    /// a bpf filter's handle ("0x1"; a u32 filter has "fh" instead)
    #[serde(default)]
    pub handle: Option<String>,
    /// a bpf filter's program
    #[serde(default)]
    pub prog: Option<Program>,
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// The BPF program a filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Program {
    pub id: u32,
}

/// One of a filter's actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Action {
    /// "mirred", "gact", ...
    #[serde(default)]
    pub kind: String,
    /// where a mirred action sends packets
    #[serde(default)]
    pub to_dev: Option<String>,
}

impl Filter {
    /// Whether one of its actions sends packets to the interface `dev`.
    pub fn redirects_to(&self, dev: &str) -> bool {
        self.options.as_ref().is_some_and(|o| {
            o.actions
                .iter()
                .any(|a| a.kind == "mirred" && a.to_dev.as_deref() == Some(dev))
        })
    }

    /// A bpf filter's program id and handle. None for another filter, or a
    /// handle that is not hexadecimal as tc prints it ("0x1"): the handle
    /// goes into a tc command line.
    pub fn bpf_program(&self) -> Option<(u32, String)> {
        let options = self.options.as_ref()?;
        let handle = options.handle.as_deref()?;
        let digits = handle.strip_prefix("0x")?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some((options.prog?.id, handle.to_string()))
    }
}

/// `tc -json qdisc show` output.
pub fn qdiscs(json: &str) -> Result<Vec<Qdisc>, serde_json::Error> {
    serde_json::from_str(json)
}

/// `tc -json filter show` output.
pub fn filters(json: &str) -> Result<Vec<Filter>, serde_json::Error> {
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// iproute2 6.1's `tc -json filter show dev lo parent ffff:` of the
    /// queue's redirect (u32 match-all, mirred to the ifb), copied from this
    /// machine.
    const REDIRECT_ALL: &str = r#"[{"protocol":"all","pref":49152,"kind":"u32","chain":0},{"protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},{"protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","not_in_hw":true,"match":{"value":"0","mask":"0","offmask":"","off":0},"actions":[{"order":1,"kind":"mirred","mirred_action":"redirect","direction":"egress","to_dev":"tst-ifb","control_action":{"type":"stolen"},"index":1,"ref":1,"bind":1}]}}]"#;

    /// ... of the node queue's classified redirect (`pref 49153`, a bpf
    /// filter and mirred).
    const CLASSIFIED_REDIRECT: &str = r#"[{"protocol":"all","kind":"bpf","chain":0},{"protocol":"all","kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"cls.o:[classifier]","not_in_hw":true,"prog":{"id":21688,"name":"flow_class","tag":"59f4a931744dcdc6","jited":1},"actions":[{"order":1,"kind":"mirred","mirred_action":"redirect","direction":"egress","to_dev":"tst-ifb","control_action":{"type":"stolen"},"index":2,"ref":1,"bind":1}]}}]"#;

    /// ... of the flow classifier on the queue's root (`parent 1: prio 3`).
    const FLOW_CLASSIFIER: &str = r#"[{"protocol":"all","kind":"bpf","chain":0},{"protocol":"all","kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"cls.o:[classifier]","not_in_hw":true,"prog":{"id":21692,"name":"flow_class","tag":"59f4a931744dcdc6","jited":1}}}]"#;

    /// ... `tc -json qdisc show` with an ingress qdisc, a clsact, an htb
    /// and a tbf.
    const QDISCS: &str = r#"[{"kind":"noqueue","handle":"0:","dev":"lo","root":true,"refcnt":2,"options":{}},{"kind":"ingress","handle":"ffff:","dev":"lo","parent":"ffff:fff1","options":{}},{"kind":"htb","handle":"1:","dev":"tst-ifb","root":true,"refcnt":2,"options":{"r2q":10,"default":"0x100","direct_packets_stat":0,"direct_qlen":32}},{"kind":"tbf","handle":"806a:","dev":"tst-peer","root":true,"refcnt":3,"options":{"rate":125000,"burst":32768,"lat":25000}},{"kind":"clsact","handle":"ffff:","dev":"tst-peer","parent":"ffff:fff1","options":{}}]"#;

    #[test]
    fn a_redirect_names_the_device_it_sends_to() {
        for json in [REDIRECT_ALL, CLASSIFIED_REDIRECT] {
            let filters = filters(json).expect("tc's JSON");
            assert!(filters.iter().any(|f| f.redirects_to("tst-ifb")), "{json}");
            assert!(!filters.iter().any(|f| f.redirects_to("tst")), "{json}");
        }
        assert!(!filters(FLOW_CLASSIFIER)
            .expect("tc's JSON")
            .iter()
            .any(|f| f.redirects_to("tst-ifb")));
    }

    #[test]
    fn a_bpf_filter_gives_its_program_and_handle_and_others_nothing() {
        let program = |json: &str| {
            filters(json)
                .expect("json")
                .iter()
                .find_map(Filter::bpf_program)
        };
        assert_eq!(program(FLOW_CLASSIFIER), Some((21692, "0x1".into())));
        assert_eq!(program(CLASSIFIED_REDIRECT), Some((21688, "0x1".into())));
        // a u32 filter's "fh" is no bpf handle
        assert_eq!(program(REDIRECT_ALL), None);
        assert_eq!(program("[]"), None);
        // a handle that could not go into a command line as tc prints it
        for handle in ["1;rm", "0x", "0x1 x", "1"] {
            let json = format!(
                r#"[{{"kind":"bpf","options":{{"handle":"{handle}","prog":{{"id":4}}}}}}]"#
            );
            assert_eq!(program(&json), None, "{handle}");
        }
    }

    #[test]
    fn qdiscs_have_their_kind_handle_and_device() {
        let all = qdiscs(QDISCS).expect("tc's JSON");
        assert_eq!(all.len(), 5);
        assert_eq!(
            all[1],
            Qdisc {
                kind: "ingress".into(),
                handle: "ffff:".into(),
                dev: Some("lo".into())
            }
        );
        assert_eq!(all.iter().filter(|q| q.kind == "tbf").count(), 1);
        assert!(qdiscs("qdisc noqueue 0: dev lo root refcnt 2").is_err());
    }
}
