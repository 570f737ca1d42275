use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Where an averager keeps its snapshots or running average.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On the device the training weights live on (fastest; uses accelerator memory).
    #[default]
    Training,
    /// In host memory (saves accelerator memory; costs a copy per snapshot or update).
    Cpu,
}

impl Storage {
    /// The device a copy of `t` goes to.
    pub(crate) fn device_for(self, t: &Tensor) -> Device {
        match self {
            Storage::Training => t.device(),
            Storage::Cpu => Device::Cpu,
        }
    }
}
