//! End-to-end: the web page of a real daemon showing a real VM, fetched over
//! 127.0.0.1 as a browser would: nothing without the key, nothing under
//! another host name, no cookie (the key is in every address), the VM, its session and
//! its console shown with the guest's markup escaped, and the page told
//! when the VM stops.

use banger_e2e::{Env, boot_permit, skip, which};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(port: u16, path: &str, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the page listens");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// One request, the whole answer (chunked bodies put together).
fn get(port: u16, path: &str, host: &str) -> Reply {
    let mut raw = Vec::new();
    send(port, path, host).read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 4 + size..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The page as a real browser leaves it (scripts run; its profile in
/// `profile`), or None when there is no browser here.
fn browser(profile: &Path, url: &str) -> Option<String> {
    let Some(chromium) = which("chromium") else {
        if std::env::var_os("BANGER_E2E_REQUIRED").is_some_and(|v| v == "1") {
            panic!("chromium is missing (apt-get install chromium)");
        }
        println!("SKIPPED the browser's part: chromium is missing (apt-get install chromium)");
        return None;
    };
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        // A throwaway profile, this test's page only.
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn digest_of(page: &str) -> String {
    let at = page.find("data-digest=\"").expect("a digest") + "data-digest=\"".len();
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

#[test]
fn the_web_page_shows_vms_to_its_key_holder_only() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let url = env.json(&["web", "--json"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("a loopback address: {url}"));
    let (port, key) = rest.split_once('/').expect("the key in the address");
    let key = key.strip_suffix('/').expect("a directory of the key");
    let port: u16 = port.parse().unwrap();
    assert_eq!(key.len(), 64, "256 bits of key");
    assert_eq!(
        env.ok(&["web"]),
        format!("{url}\n"),
        "the same address again"
    );
    let host = format!("127.0.0.1:{port}");
    let base = format!("/{key}/");

    // Without the key, with a wrong one, or under another name: nothing.
    let r = get(port, "/", &host);
    assert_eq!(r.status, 401);
    assert!(
        r.body.contains("banger web"),
        "says how to get in: {}",
        r.body
    );
    assert!(
        r.header("content-security-policy").is_some_and(
            |c| c.contains("frame-ancestors 'none'") && c.contains("script-src 'self'")
        ),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let wrong = "0".repeat(64);
    for path in [
        format!("/{wrong}/"),
        format!("/{}/", &key[..63]),
        format!("/vms/{key}/"),
        "/app.js".to_string(),
        "/events?since=x".to_string(),
    ] {
        assert_eq!(get(port, &path, &host).status, 401, "{path}");
    }
    let r = get(port, &base, &format!("rebound.example:{port}"));
    assert_eq!(r.status, 403, "a name rebound to 127.0.0.1 gets nothing");

    // The key's own address: the page, no cookie (a browser would send it
    // to every port on 127.0.0.1); the key alone leads there.
    let r = get(port, &format!("/{key}"), &host);
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(base.as_str()));
    let r = get(port, &base, &host);
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_none());
    assert!(
        r.body.contains(&format!("<base href=\"{base}\">")),
        "{}",
        r.body
    );
    assert!(r.body.contains("No VMs yet"), "{}", r.body);
    assert!(r.body.contains("<td>minimal</td>"), "the image: {}", r.body);

    // A VM, a session whose command carries markup, markup on its console.
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "shown"]);
    env.ok(&[
        "vm",
        "session",
        "start",
        "shown",
        "--name",
        "marked",
        "--",
        "sh",
        "-c",
        "echo '<img src=x onerror=alert(1)>'; sleep 600",
    ]);
    env.ok(&[
        "vm",
        "exec",
        "shown",
        "--",
        "sh",
        "-c",
        "echo '<script>alert(2)</script>' > /dev/console",
    ]);
    let r = get(port, &base.clone(), &host);
    assert!(
        r.body.contains("<a href=\"vms/shown\">shown</a>"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("<span class=\"state running\">running</span>")
    );
    assert!(
        r.body.contains(
            "<td>create</td><td>shown</td><td><span class=\"state succeeded\">succeeded</span></td>"
        ),
        "the create, done: {}",
        r.body
    );

    // A real browser: the page and its script and style from addresses
    // relative to the key (the script marks the page live: it ran under
    // the page's policy), the guest's markup text and not an element.
    let profile = env.root.path().join("browser");
    if let Some(dom) = browser(&profile, &url) {
        assert!(dom.contains("data-live=\"yes\""), "the script ran: {dom}");
        assert!(dom.contains("<a href=\"vms/shown\">shown</a>"), "{dom}");
        let dom = browser(&profile, &format!("{url}vms/shown")).unwrap();
        assert!(dom.contains("data-live=\"yes\""), "the script ran: {dom}");
        assert!(dom.contains(">marked</a></td>"), "{dom}");
        assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
        assert!(
            !dom.contains("<img"),
            "no element from the guest's text: {dom}"
        );
    }

    let r = get(port, &format!("{base}vms/shown"), &host);
    assert_eq!(r.status, 200);
    let page = &r.body;
    assert!(
        page.contains("<a href=\"vms/shown/sessions/marked/output.txt\">marked</a>"),
        "the session, linked to its output: {page}"
    );
    let r = get(
        port,
        &format!("{base}vms/shown/sessions/marked/output.txt"),
        &host,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    assert_eq!(
        r.body, "<img src=x onerror=alert(1)>\n",
        "its output, as text"
    );
    assert_eq!(
        get(
            port,
            &format!("{base}vms/shown/sessions/absent/output.txt"),
            &host
        )
        .status,
        404
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<img"),
        "the session's markup is shown, not run"
    );
    let console = &page[page.find("<pre class=\"console\">").expect("the console")..];
    assert!(
        console.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{console}"
    );
    assert!(
        !page.contains("<script>alert"),
        "the guest's markup is shown, not run"
    );
    assert!(
        console.contains("banger-agent: ready"),
        "the boot is there: {console}"
    );
    assert_eq!(
        digest_of(page),
        digest_of(&get(port, &format!("{base}vms/shown"), &host).body),
        "nothing changed, nor did the digest"
    );

    // The whole console as text, never as a page.
    let r = get(port, &format!("{base}vms/shown/console.txt"), &host);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    assert!(r.body.contains("<script>alert(2)</script>"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // The page hears when the VM stops, and then shows it stopped.
    let since = digest_of(page);
    let events = send(port, &format!("{base}events?since={since}&vm=shown"), &host);
    env.ok(&["vm", "stop", "shown"]);
    let t0 = Instant::now();
    let mut saw_change = false;
    for line in BufReader::new(events).lines() {
        let Ok(line) = line else { break };
        if line == "event: change" {
            saw_change = true;
            break;
        }
    }
    assert!(saw_change, "no change event in {:?}", t0.elapsed());
    let r = get(port, &format!("{base}vms/shown"), &host);
    assert!(
        r.body
            .contains("<span class=\"state stopped\">stopped</span>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("sessions are listed while it runs"));
    let ops = &r.body[r.body.find("<h2>Operations</h2>").expect("its operations")..];
    let stop = ops.find("<td>stop</td>").expect("the stop");
    let create = ops.find("<td>create</td>").expect("the create");
    assert!(stop < create, "newest first: {ops}");

    // Anyone here can open connections without the key: silent ones past
    // the cap (64, `web::CONNECTIONS`) are closed at once, the rest when
    // they have sent no request head in 10 s; meanwhile the daemon answers
    // its API, and afterwards the page answers again.
    let silent: Vec<TcpStream> = (0..70)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let closed = |s: &TcpStream, wait: Duration| {
        s.set_read_timeout(Some(wait)).unwrap();
        matches!((&*s).read(&mut [0u8; 16]), Ok(0))
            || matches!((&*s).read(&mut [0u8; 16]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    };
    for s in &silent[64..] {
        assert!(closed(s, Duration::from_secs(2)), "past the cap, yet open");
    }
    assert!(
        !closed(&silent[0], Duration::from_millis(300)),
        "within the cap, the head wait applies"
    );
    env.ok(&["vm", "list"]);
    let t0 = Instant::now();
    for s in &silent {
        assert!(
            closed(s, Duration::from_secs(40)),
            "a silent connection stays open"
        );
    }
    println!("silent connections closed after {:?}", t0.elapsed());
    assert_eq!(get(port, &base.clone(), &host).status, 200);

    // Names that are not there.
    let r = get(port, &format!("{base}vms/absent"), &host);
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("no vm named &quot;absent&quot;"),
        "{}",
        r.body
    );
    assert_eq!(get(port, &format!("{base}elsewhere"), &host).status, 404);
    env.ok(&["vm", "delete", "shown"]);
}
