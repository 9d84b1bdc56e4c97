//! Image install, reconcile and agent-binary lookup, on real files in temp dirs.

use super::*;

fn manifest_file(dir: &Path, source: &str) -> String {
    let manifest = serde_json::json!({
        "format": 1,
        "name": "dev",
        "source": source,
        "kernel_version": "6.1.0-56-cloud-amd64",
        "files": [],
        "created_at": 1,
        "agent_version": "sha256:00",
        "suite": "trixie",
        "packages": ["git", "vim"],
        "kernel_package": "linux-image-6.1.0-56-cloud-amd64=6.1.192-2",
        "installed": {"git": "1:2.47", "vim": "2:9.1"}
    });
    let path = dir.join("manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_preset_build_takes_its_flags() {
    let plan = plan_build(&BuildImage {
        preset: "debian".into(),
        packages: vec!["vim".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (plan.name.as_str(), plan.suite.as_str(), plan.kernel_release),
        ("debian", "bookworm", None)
    );
    let err = plan_build(&BuildImage {
        preset: "alpine".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("unknown preset \"alpine\""));
    let err = plan_build(&BuildImage {
        preset: "debian".into(),
        suite: Some("Bookworm!".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("invalid Debian suite"), "{err}");
    let err = plan_build(&BuildImage {
        preset: "minimal".into(),
        packages: vec!["vim".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("for the debian preset"), "{err}");
}

#[test]
fn a_manifest_gives_the_preset_suite_packages_and_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_build(&BuildImage {
        from_manifest: Some(manifest_file(dir.path(), "debian")),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(plan.name, "dev");
    assert_eq!(plan.preset, Preset::Debian);
    assert_eq!(plan.suite, "trixie");
    assert_eq!(plan.packages, ["git", "vim"]);
    assert_eq!(plan.kernel_release.as_deref(), Some("6.1.0-56-cloud-amd64"));
    assert_eq!(plan.expect_installed.len(), 2);
}

#[test]
fn a_manifest_refuses_flags_it_overrides_and_registered_images() {
    let dir = tempfile::tempdir().unwrap();
    let err = plan_build(&BuildImage {
        from_manifest: Some(manifest_file(dir.path(), "debian")),
        packages: vec!["curl".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("drop --suite and --packages"),
        "{err}"
    );
    let err = plan_build(&BuildImage {
        from_manifest: Some(manifest_file(dir.path(), "registered")),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("nothing to rebuild it from"),
        "{err}"
    );
}

/// An x86_64 executable header with no program headers: no loader, no
/// shared libraries, so a static agent as far as the check goes.
fn static_agent(path: &Path) -> PathBuf {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    (h[4], h[5], h[6], h[16], h[18]) = (2, 1, 1, 2, 62);
    std::fs::write(path, h).unwrap();
    path.to_path_buf()
}

/// A dynamically linked one, like a plain `cargo build` leaves.
fn dynamic_agent(path: &Path) -> PathBuf {
    std::fs::copy("/bin/true", path).unwrap();
    path.to_path_buf()
}

#[test]
fn the_agent_search_skips_a_dynamic_candidate_for_a_static_one() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dynamic_agent(&dir.path().join("next-to-bangerd"));
    let static_ = static_agent(&dir.path().join("static-build"));
    let missing = dir.path().join("missing");
    let found = first_static_agent([missing, dynamic, static_.clone()]).unwrap();
    assert_eq!(found, static_);
}

#[test]
fn only_dynamic_candidates_say_how_to_build_a_static_agent() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dynamic_agent(&dir.path().join("banger-agent"));
    let err = first_static_agent([dynamic]).unwrap_err();
    assert!(matches!(err, Error::AgentBinaryUnusable { .. }), "{err:?}");
    let chain = crate::error::chain(&err);
    assert!(chain.contains("is dynamically linked"), "{chain}");
    assert!(chain.contains("scripts/build"), "{chain}");
    let none = first_static_agent([dir.path().join("missing")]).unwrap_err();
    assert!(matches!(none, Error::AgentBinaryMissing), "{none:?}");
}

#[test]
fn a_configured_dynamic_agent_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dynamic_agent(&dir.path().join("banger-agent"));
    let err = find_agent_bin(Some(&dynamic)).unwrap_err();
    assert!(err.to_string().contains("is dynamically linked"), "{err}");
    let static_ = static_agent(&dir.path().join("static"));
    assert_eq!(find_agent_bin(Some(&static_)).unwrap(), static_);
}

/// The images service over a temp state dir and a `:memory:` store.
fn service(root: &Path) -> Arc<Images> {
    let paths = Paths {
        config_file: root.join("config.toml"),
        state_dir: root.join("state"),
        runtime_dir: root.join("run"),
        cache_dir: root.join("cache"),
    };
    let store = Arc::new(Store::open_in_memory().unwrap());
    let ops = Arc::new(Operations::new(store.clone()));
    let runner = Arc::new(crate::testing::FakeRunner::default());
    Arc::new(Images::new(paths, None, store, runner, ops))
}

fn op(images: &Images, name: &str) -> Arc<Op> {
    images.ops.begin(OperationKind::ImageBuild, name)
}

/// A builder that writes one file and counts its runs.
fn builder(runs: Arc<std::sync::atomic::AtomicUsize>) -> impl Builder {
    move |out: PathBuf, _: &mut dyn FnMut(BuildEvent)| {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("rootfs.ext4"), "root").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok(serde_json::from_value(serde_json::json!({
            "format": 1, "name": "dev", "source": "minimal", "kernel_version": null,
            "files": [], "created_at": 1, "agent_version": "sha256:00"
        }))
        .unwrap())
    }
}

fn runs() -> Arc<std::sync::atomic::AtomicUsize> {
    Arc::new(Default::default())
}

/// What is under the images dir.
fn entries(images: &Images) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(images.images_dir())
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn install(images: &Images, name: &str, force: bool) -> Result<(), Error> {
    let hint = "pass --force to rebuild it";
    images
        .install_exclusive(&op(images, name), name, force, hint, builder(runs()))
        .await
}

#[tokio::test]
async fn an_install_that_died_before_its_row_blocks_no_name() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    let dir = images.images_dir();
    // A crash after the rename (step 3), one during a build (step 1)
    // and one while removing a deleted image's files.
    for d in ["dev", ".dev.new-0badf00d", ".old.trash-0badf00d"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::write(dir.join(d).join("rootfs.ext4"), "gigabytes").unwrap();
    }
    images.reconcile();
    assert!(entries(&images).is_empty(), "{:?}", entries(&images));
    install(&images, "dev", false).await.unwrap();
    assert_eq!(images.list().unwrap().len(), 1);
    assert_eq!(entries(&images), ["dev"]);
}

#[tokio::test]
async fn an_install_over_a_directory_without_a_row_replaces_it() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    let dir = images.images_dir().join("dev");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stale"), "").unwrap();
    install(&images, "dev", false).await.unwrap();
    assert_eq!(entries(&images), ["dev"]);
    assert!(!dir.join("stale").exists() && dir.join("rootfs.ext4").exists());
}

#[tokio::test]
async fn a_delete_that_died_after_its_row_leaves_nothing_after_reconcile() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    install(&images, "dev", false).await.unwrap();
    // The crash: the row is gone (step 1), the files are not.
    assert!(images.store.delete_image("dev").unwrap());
    images.reconcile();
    assert!(entries(&images).is_empty(), "{:?}", entries(&images));
    install(&images, "dev", false).await.unwrap();
    images.delete("dev").unwrap();
    assert!(entries(&images).is_empty(), "delete leaves no trash");
    assert!(matches!(
        images.delete("dev"),
        Err(Error::ImageNotFound { .. })
    ));
}

#[tokio::test]
async fn a_row_whose_directory_is_gone_is_forgotten() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    install(&images, "dev", false).await.unwrap();
    std::fs::remove_dir_all(images.images_dir().join("dev")).unwrap();
    images.reconcile();
    assert!(matches!(
        images.show("dev"),
        Err(Error::ImageNotFound { .. })
    ));
    install(&images, "dev", false).await.unwrap();
}

#[tokio::test]
async fn a_failed_build_leaves_no_staging_dir() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    let failing = |out: PathBuf, _: &mut dyn FnMut(BuildEvent)| {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("rootfs.ext4"), "half").unwrap();
        Err(banger_image::ImageError::InvalidName {
            name: "dev".into(),
            reason: "injected".into(),
        })
    };
    let err = images
        .install_exclusive(&op(&images, "dev"), "dev", false, "", failing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(entries(&images).is_empty(), "{:?}", entries(&images));
}

#[tokio::test]
async fn concurrent_builds_of_one_name_build_once_and_leak_nothing() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    let count = runs();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (images, count) = (images.clone(), count.clone());
            tokio::spawn(async move {
                let op = op(&images, "dev");
                let hint = "pass --force to rebuild it";
                images
                    .install_exclusive(&op, "dev", false, hint, builder(count))
                    .await
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => {}
            Err(Error::ImageExists { .. }) => refused += 1,
            Err(e) => panic!("{}", crate::error::chain(&e)),
        }
    }
    assert_eq!(refused, 3, "one build wins, the others are refused");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(entries(&images), ["dev"], "no staging dir is left");
}

#[tokio::test]
async fn a_build_cancelled_while_it_waits_behind_another_ends_at_once() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    let held = images.build_lock("dev").lock_owned().await;
    let waiting = op(&images, "dev");
    let task = {
        let (images, op) = (images.clone(), waiting.clone());
        let hint = "pass --force to rebuild it";
        tokio::spawn(async move {
            images
                .install_exclusive(&op, "dev", false, hint, builder(runs()))
                .await
        })
    };
    images.ops.cancel(&waiting.id()).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("the wait ended")
        .unwrap();
    assert!(matches!(result, Err(Error::Cancelled { .. })), "{result:?}");
    drop(held);
    assert!(entries(&images).is_empty(), "nothing was built");
}

#[tokio::test]
async fn a_forced_rebuild_replaces_the_image_and_leaves_no_trash() {
    let root = tempfile::tempdir().unwrap();
    let images = service(root.path());
    install(&images, "dev", false).await.unwrap();
    std::fs::write(images.images_dir().join("dev/old"), "").unwrap();
    install(&images, "dev", true).await.unwrap();
    assert_eq!(entries(&images), ["dev"]);
    assert!(!images.images_dir().join("dev/old").exists());
    assert_eq!(images.list().unwrap().len(), 1);
}
