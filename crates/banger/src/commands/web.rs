//! `banger web`: the address of the daemon's web page (VMs, images,
//! sessions, snapshots, consoles, operations), its key included. The daemon
//! starts listening on 127.0.0.1 when first asked; the address holds until
//! it exits (with `web_port` unset, the next daemon picks another port).

use anyhow::bail;
use banger_api::WebAddress;

use super::Context;
use crate::output;

pub async fn run(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let web: WebAddress = client.post_empty("/v1/web").await?;
    if !is_loopback_address(&web.url) {
        // Printed for a browser: nothing but our own page's shape goes out.
        bail!(
            "the daemon's web address is not one this banger expects; is the daemon at the socket banger's own?"
        );
    }
    if json {
        output::print_json(&web)?;
    } else {
        output::print_str(&format!("{}\n", web.url));
    }
    Ok(0)
}

/// `http://127.0.0.1:<port>/<64 hex digits>/`, nothing else.
fn is_loopback_address(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://127.0.0.1:") else {
        return false;
    };
    let Some((port, key)) = rest.strip_suffix('/').and_then(|r| r.split_once('/')) else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && port.bytes().all(|b| b.is_ascii_digit())
        && key.len() == 64
        && key.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_address_with_a_key_is_printed() {
        let key = "ab".repeat(32);
        assert!(is_loopback_address(&format!(
            "http://127.0.0.1:8080/{key}/"
        )));
        for bad in [
            format!("http://evil.example:8080/{key}/"),
            format!("http://127.0.0.1:0/{key}/"),
            format!("http://127.0.0.1:+80/{key}/"),
            format!("http://127.0.0.1:8080/{key}/\x1b]0;x\x07"),
            "http://127.0.0.1:8080/short/".to_string(),
            format!("http://127.0.0.1:8080@evil/{key}/"),
            format!("http://127.0.0.1:8080/{key}/x/"),
        ] {
            assert!(!is_loopback_address(&bad), "{bad:?}");
        }
    }
}
