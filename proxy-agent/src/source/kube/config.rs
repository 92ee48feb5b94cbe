//! Which API server to watch: `--kubeconfig PATH`, else the in-cluster service account (a DaemonSet),
//! else `KUBECONFIG` or `~/.kube/config` (a developer's machine).

use std::path::Path;

use ::kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use anyhow::{Context, Result, anyhow};

/// The client and the server's address (for `status`).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<(Client, String)> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| {
                    anyhow!(
                        "no API server to watch: not in a cluster ({in_cluster}) and no kubeconfig \
                         ({kubeconfig}); pass --kubeconfig PATH, or --manifests DIR for standalone mode"
                    )
                })?,
        },
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).with_context(|| format!("building the API client for {url}"))?;
    Ok((client, url))
}
