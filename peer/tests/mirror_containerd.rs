//! A real containerd pulls an umoci-built, skopeo-pushed image through the mirror with
//! `ctr images pull --hosts-dir <dir written by shoal-peer containerd-config>`, and the unpacked
//! image holds the right files.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tools_present() -> bool {
    [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/bin/umoci",
        "/usr/bin/skopeo",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

struct Containerd {
    child: std::process::Child,
    root: std::path::PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount anything left under the root (snapshots, image mounts).
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep ' {0}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l",
                self.root.display()
            ))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_the_mirror() {
    if !tools_present() {
        eprintln!("skipping: containerd, ctr, umoci or skopeo is not installed");
        return;
    }
    with_timeout(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Two layers built with umoci.
        let layout = d.join("oci");
        let bundle = d.join("bundle");
        run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:t", layout.display())));
        let image_ref = format!("{}:t", layout.display());
        let one = random_blob(80, 3 << 20);
        let two = random_blob(81, 2 << 20);
        for (name, data) in [("one.bin", &one), ("two.bin", &two)] {
            let _ = std::fs::remove_dir_all(&bundle);
            run(Command::new("umoci")
                .args(["unpack", "--rootless", "--image", &image_ref])
                .arg(&bundle));
            std::fs::write(bundle.join("rootfs").join(name), data).unwrap();
            run(Command::new("umoci")
                .args(["repack", "--image", &image_ref])
                .arg(&bundle));
        }
        let origin = Origin::start().await;
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{image_ref}"),
            &format!("docker://127.0.0.1:{}/ctr/app:t", origin.registry.port),
        ]));

        let host = format!("127.0.0.1:{}", origin.proxy.port);
        let peer = Peer::start(
            "peer",
            PeerOpts::embedded().arg("--insecure-registry").arg(&host),
        )
        .await;
        let certs = d.join("certs.d");
        run(Command::new(peer_bin())
            .args(["containerd-config", "--registry", &host, "--insecure"])
            .arg("--config-path")
            .arg(&certs)
            .args(["--mirror", &peer.mirror_url()]));

        let cdir = d.join("containerd");
        std::fs::create_dir_all(&cdir).unwrap();
        let sock = cdir.join("sock");
        let config = cdir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
                cdir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(cdir.join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let _containerd = Containerd {
            child,
            root: cdir.clone(),
        };
        wait_for("containerd socket", Duration::from_secs(30), || {
            let s = sock.clone();
            async move { s.exists().then_some(()) }
        })
        .await;
        let addr = sock.display().to_string();
        let reference = format!("{host}/ctr/app:t");
        let before = origin.egress();
        let pull = tokio::task::spawn_blocking({
            let (addr, reference, certs) = (addr.clone(), reference.clone(), certs.clone());
            move || {
                run(Command::new("ctr")
                    .args(["--address", &addr, "images", "pull", "--hosts-dir"])
                    .arg(&certs)
                    .arg(&reference))
            }
        })
        .await
        .unwrap();
        eprintln!("{pull}");
        let pulled = origin.egress() - before;
        let served = peer
            .metric(
                "shoal_peer_mirror_requests_total",
                &[("kind", "blob"), ("status", "200")],
            )
            .await;
        assert!(
            served >= 3.0,
            "containerd did not fetch the config and layers through the mirror ({served} blob \
             requests); pull output: {pull}"
        );
        assert!(pulled >= (5 << 20), "registry sent only {pulled} bytes");

        let target = d.join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        run(Command::new("ctr")
            .args(["--address", &addr, "images", "mount", &reference])
            .arg(&target));
        let got_one = std::fs::read(target.join("one.bin")).unwrap();
        let got_two = std::fs::read(target.join("two.bin")).unwrap();
        let _ = Command::new("ctr")
            .args(["--address", &addr, "images", "unmount"])
            .arg(&target)
            .status();
        assert!(got_one == one, "one.bin differs after unpack");
        assert!(got_two == two, "two.bin differs after unpack");
    })
    .await
}
