//! `banger image build|register|list|show|delete`. Build and register are
//! operations followed with progress (a build downloads packages and can
//! take a minute); the rest are plain requests.

use std::path::Path;

use anyhow::Context as _;
use banger_api::{BuildImage, Image, OperationRef, RegisterImage};

use super::Context;
use crate::cli::{BuildArgs, RegisterArgs};
use crate::client::path_segment;
use crate::output::{self, Table, or_dash, render_fields};
use crate::progress::{self, Style};
use crate::units::{format_age, format_bytes};
use banger_sys::clock::unix_now;

pub async fn build(ctx: &Context, args: BuildArgs) -> anyhow::Result<i32> {
    if let Some(name) = &args.name {
        banger_api::validate_image_name(name).map_err(anyhow::Error::msg)?;
    }
    let from_manifest = args
        .from_manifest
        .as_deref()
        .map(|p| absolute(p, "manifest"))
        .transpose()?;
    let preset = args
        .preset
        .unwrap_or_else(|| default_preset(args.name.as_deref()));
    let client = ctx.client().await?;
    let body = BuildImage {
        name: args.name,
        preset,
        force: args.force,
        packages: args.packages,
        suite: args.suite,
        from_manifest,
    };
    let op: OperationRef = client.post("/v1/images/build", &body).await?;
    // Ctrl-C cancels it: the daemon stops the programs and removes what it made.
    progress::follow_cancellable(&client, &op, Style::for_stderr()).await?;
    Ok(0)
}

/// The preset `image build` makes without `--preset`: the one the image's
/// name names (`--name debian --force` rebuilds a debian, not a busybox
/// image called debian), else minimal.
fn default_preset(name: Option<&str>) -> String {
    name.and_then(|n| n.parse::<banger_api::Preset>().ok())
        .unwrap_or(banger_api::Preset::Minimal)
        .to_string()
}

pub async fn register(ctx: &Context, args: RegisterArgs) -> anyhow::Result<i32> {
    banger_api::validate_image_name(&args.name).map_err(anyhow::Error::msg)?;
    let body = RegisterImage {
        name: args.name,
        kernel: absolute(&args.kernel, "kernel")?,
        rootfs: absolute(&args.rootfs, "rootfs")?,
        initrd: args
            .initrd
            .as_deref()
            .map(|p| absolute(p, "initrd"))
            .transpose()?,
        modules: args
            .modules
            .as_deref()
            .map(|p| absolute(p, "modules"))
            .transpose()?,
    };
    let client = ctx.client().await?;
    let op: OperationRef = client.post("/v1/images/register", &body).await?;
    // Ctrl-C cancels it: the daemon stops the programs and removes what it made.
    progress::follow_cancellable(&client, &op, Style::for_stderr()).await?;
    Ok(0)
}

/// The daemon runs elsewhere (another cwd, maybe another user): it gets
/// absolute paths, checked here so a typo fails before any work.
fn absolute(path: &Path, what: &str) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{what} {}", path.display()))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("{what} path {} is not valid UTF-8", Path::new(&p).display()))
}

pub async fn list(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let raw: serde_json::Value = client.get("/v1/images").await?;
    if json {
        output::print_json(&raw)?;
        return Ok(0);
    }
    let images: Vec<Image> = serde_json::from_value(raw)
        .context("the daemon's image list is not what this banger expects")?;
    image_table(&images, unix_now()).print();
    Ok(0)
}

fn image_table(images: &[Image], now: i64) -> Table {
    let mut table = Table::new(&["NAME", "SOURCE", "KERNEL", "SIZE", "AGE", "WARM"]);
    for image in images {
        let warm = match &image.warm {
            None => "-".to_string(),
            Some(w) if w.stale.is_some() => "stale".to_string(),
            Some(w) => format!("{} cpu, {} MiB", w.cpus, w.memory_mib),
        };
        table.row(vec![
            image.name.clone(),
            image.source.clone(),
            or_dash(image.kernel_version.as_ref()),
            format_bytes(image.size_bytes),
            format_age(now, image.created_at),
            warm,
        ]);
    }
    table
}

/// The warm snapshot as `image show` says it.
fn warm_field(w: &banger_api::WarmImage, now: i64) -> String {
    let machine = format!(
        "{} cpu, {} MiB memory, {} MiB disk, network {}, {}; {}, made {} ago",
        w.cpus,
        w.memory_mib,
        w.disk_size_mib,
        w.network,
        w.engine.as_str(),
        format_bytes(w.size_bytes),
        format_age(now, w.created_at)
    );
    match (&w.stale, &w.standby) {
        (Some(why), _) => format!("{machine}; stale: {why}"),
        (None, Some(standby)) => format!("{machine}; standby {standby}"),
        (None, None) => machine,
    }
}

/// `image warm NAME [--remove]`.
pub async fn warm(ctx: &Context, name: &str, remove: bool) -> anyhow::Result<i32> {
    banger_api::validate_image_name(name).map_err(anyhow::Error::msg)?;
    let client = ctx.client().await?;
    let path = format!("/v1/images/{}/warm", path_segment(name));
    if remove {
        client.delete::<()>(&path).await?;
        eprintln!("image {name}'s warm snapshot removed");
        return Ok(0);
    }
    let op: OperationRef = client.post(&path, &serde_json::json!({})).await?;
    progress::follow(&client, &op, Style::for_stderr()).await?;
    Ok(0)
}

pub async fn show(ctx: &Context, name: &str, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let raw: serde_json::Value = client
        .get(&format!("/v1/images/{}", path_segment(name)))
        .await?;
    if json {
        output::print_json(&raw)?;
        return Ok(0);
    }
    let image: Image = serde_json::from_value(raw)
        .context("the daemon's image record is not what this banger expects")?;
    output::print_str(&image_fields(&image, unix_now()));
    Ok(0)
}

fn image_fields(image: &Image, now: i64) -> String {
    let mut fields = vec![
        ("name", image.name.clone()),
        ("source", image.source.clone()),
        ("kernel", or_dash(image.kernel_version.as_ref())),
    ];
    if let Some(package) = &image.kernel_package {
        fields.push(("kernel package", package.clone()));
    }
    if let Some(suite) = &image.suite {
        fields.push(("suite", suite.clone()));
    }
    if !image.packages.is_empty() {
        fields.push(("packages", image.packages.join(",")));
    }
    if image.installed_packages > 0 {
        fields.push((
            "installed",
            format!(
                "{} packages (versions in {}/manifest.json; rebuild with image build --from-manifest)",
                image.installed_packages, image.dir
            ),
        ));
    }
    fields.extend([
        ("size", format_bytes(image.size_bytes)),
        (
            "created",
            format!("{} ago", format_age(now, image.created_at)),
        ),
        ("dir", image.dir.clone()),
    ]);
    if let Some(w) = &image.warm {
        fields.push(("warm", warm_field(w, now)));
    }
    let mut text = render_fields(&fields);
    if !image.files.is_empty() {
        text.push_str("files:\n");
        let mut table = Table::new(&["  NAME", "SIZE", "SHA256"]);
        for file in &image.files {
            let short = file.sha256.get(..12).unwrap_or(&file.sha256);
            table.row(vec![
                format!("  {}", file.name),
                format_bytes(file.size),
                short.to_string(),
            ]);
        }
        text.push_str(&table.render());
    }
    text
}

pub async fn delete(ctx: &Context, name: &str) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    client
        .delete::<()>(&format!("/v1/images/{}", path_segment(name)))
        .await?;
    eprintln!("image {name} deleted");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use banger_api::ImageFile;

    use super::*;

    #[test]
    fn without_a_preset_the_name_picks_it_when_it_names_one() {
        assert_eq!(default_preset(Some("debian")), "debian");
        assert_eq!(default_preset(Some("minimal")), "minimal");
        assert_eq!(default_preset(Some("work")), "minimal");
        assert_eq!(default_preset(None), "minimal");
    }

    fn image() -> Image {
        Image {
            name: "minimal".into(),
            source: "minimal".into(),
            kernel_version: Some("6.1.0-31-cloud-amd64".into()),
            created_at: 0,
            dir: "/s/images/minimal".into(),
            files: vec![ImageFile {
                name: "vmlinux".into(),
                sha256: "ab".repeat(32),
                size: 30 * 1024 * 1024,
            }],
            size_bytes: 48 * 1024 * 1024,
            ..Default::default()
        }
    }

    #[test]
    fn image_list_is_aligned() {
        let mut registered = image();
        registered.name = "mine".into();
        registered.source = "registered".into();
        registered.kernel_version = None;
        let mut warm = image();
        warm.name = "warm".into();
        warm.warm = Some(warm_image(None));
        let mut stale = image();
        stale.name = "stale".into();
        stale.warm = Some(warm_image(Some("the image was rebuilt since")));
        assert_eq!(
            image_table(&[image(), registered, warm, stale], 180).render(),
            "NAME     SOURCE      KERNEL                SIZE  AGE  WARM\n\
             minimal  minimal     6.1.0-31-cloud-amd64  48M   3m   -\n\
             mine     registered  -                     48M   3m   -\n\
             warm     minimal     6.1.0-31-cloud-amd64  48M   3m   1 cpu, 256 MiB\n\
             stale    minimal     6.1.0-31-cloud-amd64  48M   3m   stale\n"
        );
    }

    fn warm_image(stale: Option<&str>) -> banger_api::WarmImage {
        banger_api::WarmImage {
            cpus: 1,
            memory_mib: 256,
            disk_size_mib: 512,
            network: banger_api::NetworkMode::None,
            engine: banger_api::EngineKind::Qemu,
            created_at: 60,
            size_bytes: 40 << 20,
            stale: stale.map(Into::into),
            standby: None,
        }
    }

    #[test]
    fn image_show_says_what_the_warm_snapshot_fits_and_why_it_is_stale() {
        let mut img = image();
        img.warm = Some(warm_image(Some("the image was rebuilt since")));
        let text = image_fields(&img, 180);
        assert!(
            text.contains("warm:     1 cpu, 256 MiB memory, 512 MiB disk, network none, qemu; 40M, made 2m ago; stale: the image was rebuilt since"),
            "{text}"
        );
    }

    #[test]
    fn image_show_lists_files_with_short_hashes() {
        let text = image_fields(&image(), 0);
        assert!(text.contains("  vmlinux  30M   abababababab\n"), "{text}");
        assert!(!text.contains("installed"), "{text}");
    }

    #[test]
    fn image_show_tells_what_a_debian_image_is_made_of() {
        let debian = Image {
            source: "debian".into(),
            suite: Some("bookworm".into()),
            packages: vec!["git".into(), "vim".into()],
            kernel_package: Some("linux-image-6.1.0-31-cloud-amd64=6.1.128-1".into()),
            installed_packages: 215,
            ..image()
        };
        let text = image_fields(&debian, 0);
        for want in [
            "kernel package:  linux-image-6.1.0-31-cloud-amd64=6.1.128-1\n",
            "suite:           bookworm\n",
            "packages:        git,vim\n",
            "installed:       215 packages (versions in /s/images/minimal/manifest.json; rebuild with image build --from-manifest)\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn missing_paths_are_named() {
        let err = absolute(Path::new("/no/such/vmlinux"), "kernel").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("kernel /no/such/vmlinux: "),
            "{err:#}"
        );
    }
}
