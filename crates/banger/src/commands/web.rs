//! `banger web`: the address of the daemon's web page (VMs, images,
//! sessions, snapshots, consoles), its key included. The daemon starts
//! listening on 127.0.0.1 when first asked; the address holds until it
//! exits (with `web_port` unset, the next daemon picks another port).

use banger_api::WebAddress;

use super::Context;
use crate::output;

pub async fn run(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let web: WebAddress = client.post_empty("/v1/web").await?;
    if json {
        output::print_json(&web)?;
    } else {
        output::print_str(&format!("{}\n", web.url));
    }
    Ok(0)
}
