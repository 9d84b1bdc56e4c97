//! `banger doctor`: the daemon's checks of this host, one line each, with
//! what to do about warnings and failures, and (`--fix`) removal of what
//! banger left behind that no VM owns. Exits 1 if any check fails.

use anyhow::Context as _;
use banger_api::{CheckStatus, DoctorReport};

use super::Context;
use crate::exit;
use crate::output;

pub async fn run(ctx: &Context, json: bool, fix: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let raw: serde_json::Value = if fix {
        client.post_empty("/v1/doctor/fix").await?
    } else {
        client.get("/v1/doctor").await?
    };
    let report: DoctorReport = serde_json::from_value(raw.clone())
        .context("the daemon's doctor report is not what this banger expects")?;
    if json {
        output::print_json(&raw)?;
    } else {
        output::print_str(&render(&report));
    }
    let failed = report.checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed { exit::FAILURE } else { 0 })
}

fn render(report: &DoctorReport) -> String {
    let mut text = String::new();
    for check in &report.checks {
        let status = match check.status {
            CheckStatus::Pass => "PASS",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        text.push_str(&format!("{status}  {}: {}\n", check.name, check.detail));
        if let (CheckStatus::Warn | CheckStatus::Fail, Some(fix)) = (check.status, &check.fix) {
            text.push_str(&format!("      fix: {fix}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use banger_api::Check;

    use super::*;

    #[test]
    fn checks_print_one_line_each_with_fixes_indented() {
        let check = |name: &str, status, fix: Option<&str>| Check {
            name: name.into(),
            status,
            detail: "detail".into(),
            fix: fix.map(Into::into),
        };
        let report = DoctorReport {
            checks: vec![
                check("qemu", CheckStatus::Pass, Some("unused")),
                check("kvm", CheckStatus::Warn, Some("add the user to group kvm")),
                check("mkfs.ext4", CheckStatus::Fail, None),
            ],
        };
        assert_eq!(
            render(&report),
            "PASS  qemu: detail\n\
             WARN  kvm: detail\n      fix: add the user to group kvm\n\
             FAIL  mkfs.ext4: detail\n"
        );
    }
}
