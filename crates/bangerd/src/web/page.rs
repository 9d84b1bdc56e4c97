//! The web page's HTML, rendered on the server from the API's own types.
//! Every piece of text that is not a literal here goes through [`esc`]: VM
//! and session names are checked at creation, but session commands, errors
//! and the console are the guest's or the user's words, and the console is
//! first made safe for a reader ([`escape_text`]: no terminal controls, no
//! bidirectional overrides) before it is made safe for HTML.

use banger_api::text::escape_text;
use banger_api::units::{format_age, format_bytes, format_mib};
use banger_api::{Image, Operation, OperationState, Session, Snapshot, Vm};
use std::fmt::Write;

/// `s` safe inside HTML text and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page. `base` is where its addresses start (`/<key>/`); `digest`
/// the state it shows: the script asks the daemon to say when that
/// changes, then reloads.
pub fn document(base: &str, title: &str, digest: &str, watch: Option<&str>, body: &str) -> String {
    let watch = watch.map_or(String::new(), |vm| format!(" data-vm=\"{}\"", esc(vm)));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><base href=\"{}\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"style.css\">\
         <script src=\"app.js\" defer></script></head>\
         <body data-digest=\"{}\"{watch}>\n{body}</body></html>\n",
        esc(base),
        esc(title),
        esc(digest),
    )
}

/// A page that only says something (401, 403, 404): no script, no style,
/// nothing it links to.
pub fn message(title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body>\n<h1>{0}</h1>\n<p>{1}</p>\n</body></html>\n",
        esc(title),
        esc(text)
    )
}

/// What the overview shows of the daemon.
pub struct Daemon<'a> {
    pub version: &'a str,
    pub pid: u32,
    pub state_dir: &'a str,
    pub started_at: i64,
}

fn state_cell(state: &str) -> String {
    format!("<td><span class=\"state {0}\">{0}</span></td>", esc(state))
}

/// Where a VM answers: its bridge address and name, or its forwarded ports.
fn address(vm: &Vm) -> String {
    let mut parts: Vec<String> = vm.ip.iter().cloned().collect();
    parts.extend(vm.dns_name.iter().cloned());
    parts.extend(
        vm.ports
            .iter()
            .map(|p| format!("127.0.0.1:{} → {}", p.host, p.guest)),
    );
    parts.join(", ")
}

pub fn overview(
    daemon: &Daemon,
    vms: &[Vm],
    images: &[Image],
    ops: &[Operation],
    now: i64,
) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>banger</h1>\n<p class=\"meta\">bangerd {} · pid {} · up {} · {}</p>",
        esc(daemon.version),
        daemon.pid,
        format_age(now, daemon.started_at),
        esc(daemon.state_dir)
    );
    b.push_str("<h2>VMs</h2>\n");
    if vms.is_empty() {
        b.push_str("<p>No VMs yet. <code>banger vm run -- uname -a</code> makes one.</p>\n");
    } else {
        b.push_str(
            "<table><tr><th>name</th><th>state</th><th>image</th><th>cpus</th>\
             <th>memory</th><th>address</th><th>age</th></tr>\n",
        );
        for vm in vms {
            let _ = writeln!(
                b,
                "<tr><td><a href=\"vms/{0}\">{0}</a></td>{1}<td>{2}</td><td>{3}</td>\
                 <td>{4}</td><td>{5}</td><td>{6}</td></tr>",
                esc(&vm.name),
                state_cell(vm.state.as_str()),
                esc(&vm.image),
                vm.cpus,
                format_mib(vm.memory_mib),
                esc(&address(vm)),
                format_age(now, vm.created_at),
            );
            if let Some(err) = vm
                .last_error
                .as_deref()
                .filter(|_| vm.state.as_str() == "failed")
            {
                let _ = writeln!(
                    b,
                    "<tr class=\"error\"><td></td><td colspan=\"6\">{}</td></tr>",
                    esc(err)
                );
            }
        }
        b.push_str("</table>\n");
    }
    b.push_str("<h2>Images</h2>\n");
    if images.is_empty() {
        b.push_str("<p>No images yet. <code>banger image build --preset debian</code> builds the default one.</p>\n");
    } else {
        b.push_str(
            "<table><tr><th>name</th><th>source</th><th>kernel</th><th>size</th>\
             <th>age</th><th>warm</th></tr>\n",
        );
        for image in images {
            let warm = match &image.warm {
                None => "no".to_string(),
                Some(w) => match (&w.stale, &w.standby) {
                    (Some(why), _) => format!("stale: {why}"),
                    (None, Some(standby)) => format!(
                        "{} cpu, {}, standby {standby}",
                        w.cpus,
                        format_mib(w.memory_mib)
                    ),
                    (None, None) => format!("{} cpu, {}", w.cpus, format_mib(w.memory_mib)),
                },
            };
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&image.name),
                esc(&image.source),
                esc(image.kernel_version.as_deref().unwrap_or("")),
                format_bytes(image.size_bytes),
                format_age(now, image.created_at),
                esc(&warm),
            );
        }
        b.push_str("</table>\n");
    }
    b.push_str("<h2>Operations</h2>\n");
    b.push_str(&operations(ops, now, true));
    b
}

/// A serde word (`image_build`) as words (`image build`).
pub fn word<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// Operations, newest first: what, on what, how it went, and while it
/// runs, the stage it is in.
pub fn operations(ops: &[Operation], now: i64, with_target: bool) -> String {
    if ops.is_empty() {
        return "<p>None yet.</p>\n".into();
    }
    let mut b = String::from("<table><tr><th>operation</th>");
    if with_target {
        b.push_str("<th>on</th>");
    }
    b.push_str("<th>state</th><th>started</th><th>took</th><th>stage or error</th></tr>\n");
    for op in ops {
        let running = op.state == OperationState::Running;
        let took = match op.duration_ms {
            Some(ms) if !running => banger_api::units::format_duration_ms(ms),
            _ => String::new(),
        };
        let detail = match (&op.error, op.stages.last()) {
            (Some(e), _) => e.message.clone(),
            (None, Some(stage)) if running => format!("{}…", stage.label),
            _ => String::new(),
        };
        let _ = write!(b, "<tr><td>{}</td>", esc(&word(op.kind)));
        if with_target {
            let _ = write!(b, "<td>{}</td>", esc(&op.target));
        }
        let _ = writeln!(
            b,
            "{}<td>{} ago</td><td>{}</td><td>{}</td></tr>",
            state_cell(&word(op.state)),
            format_age(now, op.started_at),
            took,
            esc(&detail),
        );
    }
    b.push_str("</table>\n");
    b
}

/// What the VM page shows besides the VM itself.
pub struct VmExtras<'a> {
    /// The guest's sessions, or why they cannot be listed.
    pub sessions: &'a Result<Vec<Session>, String>,
    pub snapshots: &'a [Snapshot],
    /// The end of the console log.
    pub console: &'a [u8],
    /// Whether the console has more before `console`.
    pub console_cut: bool,
    /// Its operations, newest first.
    pub operations: &'a [Operation],
}

pub fn vm(vm: &Vm, extras: &VmExtras, now: i64) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<p><a href=\"./\">← all VMs</a></p>\n<h1>{} <span class=\"state {}\">{}</span></h1>",
        esc(&vm.name),
        esc(vm.state.as_str()),
        esc(vm.state.as_str())
    );
    let mut fields: Vec<(&str, String)> = vec![
        ("image", vm.image.clone()),
        ("cpus", vm.cpus.to_string()),
        ("memory", format_mib(vm.memory_mib)),
        ("work disk", format_mib(vm.disk_size_mib)),
        (
            "engine",
            match &vm.accel {
                Some(a) => format!("{} ({a})", vm.engine.as_str()),
                None => vm.engine.as_str().to_string(),
            },
        ),
        ("network", vm.network.as_str().to_string()),
    ];
    let addr = address(vm);
    if !addr.is_empty() {
        fields.push(("address", addr));
    }
    if !vm.allow.is_empty() {
        fields.push(("egress only to", vm.allow.join(", ")));
    }
    if vm.host_access {
        fields.push(("host access", "yes".into()));
    }
    if let Some(pid) = vm.pid {
        fields.push(("engine pid", pid.to_string()));
    }
    fields.push(("created", format!("{} ago", format_age(now, vm.created_at))));
    fields.push(("directory", vm.dir.clone()));
    if let Some(p) = &vm.paused {
        fields.push(("paused", p.clone()));
    }
    if let Some(e) = &vm.last_error {
        fields.push(("last error", e.clone()));
    }
    b.push_str("<table class=\"fields\">\n");
    for (k, v) in &fields {
        let _ = writeln!(b, "<tr><th>{k}</th><td>{}</td></tr>", esc(v));
    }
    b.push_str("</table>\n");
    let _ = writeln!(
        b,
        "<p class=\"meta\"><code>banger vm ssh {0}</code> · <code>banger vm exec -t {0} -- sh</code> · \
         <code>banger vm logs -f {0}</code></p>",
        esc(&vm.name)
    );

    b.push_str("<h2>Sessions</h2>\n");
    match extras.sessions {
        Err(why) => {
            let _ = writeln!(b, "<p>{}</p>", esc(why));
        }
        Ok(list) if list.is_empty() => b.push_str(
            "<p>None. <code>banger vm session start NAME --name build -- make</code> starts one.</p>\n",
        ),
        Ok(list) => {
            b.push_str(
                "<table><tr><th>name</th><th>state</th><th>exit</th><th>started</th>\
                 <th>output</th><th>command</th><th>directory</th></tr>\n",
            );
            for s in list {
                let exit = match (s.exit_code, s.signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(sig)) => format!("signal {sig}"),
                    (None, None) => String::new(),
                };
                let _ = writeln!(
                    b,
                    "<tr><td><a href=\"vms/{vm}/sessions/{name}/output.txt\">{name}</a></td>{state}\
                     <td>{exit}</td><td>{age} ago</td><td>{bytes}</td><td><code>{argv}</code></td><td>{cwd}</td></tr>",
                    vm = esc(&vm.name),
                    name = esc(&s.name),
                    state = state_cell(s.state.as_str()),
                    exit = esc(&exit),
                    age = format_age(now, s.started_at),
                    bytes = format_bytes(s.output_bytes),
                    argv = esc(&s.argv.join(" ")),
                    cwd = esc(&s.cwd),
                );
                if let Some(e) = &s.error {
                    let _ = writeln!(
                        b,
                        "<tr class=\"error\"><td></td><td colspan=\"6\">{}</td></tr>",
                        esc(e)
                    );
                }
            }
            b.push_str("</table>\n");
        }
    }

    b.push_str("<h2>Snapshots</h2>\n");
    if extras.snapshots.is_empty() {
        let _ = writeln!(
            b,
            "<p>None. <code>banger vm snapshot {}</code> takes one.</p>",
            esc(&vm.name)
        );
    } else {
        b.push_str("<table><tr><th>name</th><th>size</th><th>shared</th><th>age</th></tr>\n");
        for s in extras.snapshots {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                format_bytes(s.size_bytes),
                format_bytes(s.shared_bytes),
                format_age(now, s.created_at),
            );
        }
        b.push_str("</table>\n");
    }

    b.push_str("<h2>Operations</h2>\n");
    b.push_str(&operations(extras.operations, now, false));

    let _ = writeln!(
        b,
        "<h2>Console</h2>\n<p class=\"meta\">{}<a href=\"vms/{}/console.txt\">the whole log</a></p>",
        if extras.console_cut {
            "The end of it; "
        } else {
            ""
        },
        esc(&vm.name)
    );
    let text = escape_text(&String::from_utf8_lossy(extras.console));
    let _ = writeln!(b, "<pre class=\"console\">{}</pre>", esc(&text));
    b
}

/// The page's script: reload when the daemon says what it shows changed.
pub const SCRIPT: &str = r#"// banger: reload when the state this page shows changes.
(function () {
  var body = document.body;
  // Relative: the page's base address carries its key.
  var url = "events?since=" + encodeURIComponent(body.dataset.digest || "");
  if (body.dataset.vm) url += "&vm=" + encodeURIComponent(body.dataset.vm);
  var events = new EventSource(url);
  body.dataset.live = "yes";
  events.addEventListener("change", function () {
    events.close();
    location.reload();
  });
})();
"#;

pub const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
table.fields{width:auto}table.fields th{font-weight:normal;color:#666}\
code,pre{font-family:ui-monospace,monospace;font-size:.92em}\
pre.console{background:#111;color:#ddd;padding:1em;overflow:auto;max-height:40em;white-space:pre-wrap}\
.meta{color:#666}.error td{color:#a00}\
.state{padding:.05em .45em;border-radius:.3em;background:#eee}\
.state.running{background:#d8f3dc}.state.failed{background:#f8d7da}.state.paused{background:#fff3cd}\
.state.exited,.state.succeeded{background:#e7e7ff}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_shown_not_run() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn a_document_escapes_its_title_and_digest() {
        let d = document("/k/", "a<b", "x\"y", Some("v\"m"), "<p>body</p>");
        assert!(d.contains("<base href=\"/k/\">"), "{d}");
        assert!(d.contains("<title>a&lt;b</title>"), "{d}");
        assert!(d.contains("data-digest=\"x&quot;y\""), "{d}");
        assert!(d.contains("data-vm=\"v&quot;m\""), "{d}");
        assert!(d.contains("<p>body</p>"));
    }
}
