//! What registration accepts: the id rules, the field checks and the
//! address fence. Pure: nothing here touches the table.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::label::Label;
use crate::protocol::{MAX_WEIGHT, Registration};

/// A registration field, named in every refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Field {
    Id,
    Service,
    Address,
    MetricsPort,
    Weight,
}

/// Why a registration was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A field is malformed or out of range (422).
    #[error("{}: {reason}", field.as_str())]
    Invalid { field: Field, reason: String },
    /// The address is outside `registration.allowed_networks` (403).
    #[error("address: {ip} is not in registration.allowed_networks")]
    Unlisted { ip: IpAddr },
    /// A loopback/link-local/... address only a network naming that class allows (403).
    #[error(
        "address: {ip} is a loopback/link-local/multicast/unspecified address; \
         list its network in registration.allowed_networks to allow it"
    )]
    Special { ip: IpAddr },
    /// `registration.max_backends` reached (429).
    #[error("registry is full: {0} backends registered (registration.max_backends)")]
    Full(usize),
}

impl RegisterError {
    fn invalid(field: Field, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<Field> {
        match self {
            Self::Invalid { field, .. } => Some(*field),
            Self::Unlisted { .. } | Self::Special { .. } => Some(Field::Address),
            Self::Full(_) => None,
        }
    }
}

/// A registration that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    pub id: String,
    /// The service, resolved (`lb.default_service` when none was named).
    pub service: Arc<str>,
    /// Whether the request named the service (echoed back only then).
    pub named_service: bool,
    pub addr: SocketAddr,
    pub metrics_port: u16,
    pub weight: u32,
    /// The registration's `protocol`, carried to [`super::Upstream::protocol`].
    pub protocol: Option<crate::protocol::Protocol>,
}

/// What registration accepts: the address fence and the size cap.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allowed_networks: Vec<IpNet>,
    pub max_backends: usize,
    pub lease_ttl: Duration,
    /// Service of un-named registrations; empty = every one must name one.
    pub default_service: String,
}

/// Whether `ip` is one of the classes refused unless a network lists it.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_special(IpAddr::V4(v4)))
        }
    }
}

/// A name (`id`, `service`): 1–253 chars of `[A-Za-z0-9._-]`.
pub fn validate_name(field: Field, name: &str) -> Result<(), RegisterError> {
    crate::protocol::check_name(name).map_err(|reason| RegisterError::invalid(field, reason))
}

/// `id`: 1–253 chars of `[A-Za-z0-9._-]`.
pub fn validate_id(id: &str) -> Result<(), RegisterError> {
    validate_name(Field::Id, id)
}

impl Policy {
    /// Check a registration against the format rules and the fence.
    pub fn validate(&self, reg: &Registration) -> Result<Valid, RegisterError> {
        validate_id(&reg.id)?;
        let service = self.service_of(reg.service.as_deref())?;
        let addr: SocketAddr = reg.address.parse().map_err(|_| {
            RegisterError::invalid(
                Field::Address,
                format!(
                    "{:?} is not IP:port (use [v6]:port for IPv6)",
                    truncate(&reg.address, 64)
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(RegisterError::invalid(
                Field::Address,
                "port must be 1-65535",
            ));
        }
        if reg.metrics_port == 0 {
            return Err(RegisterError::invalid(
                Field::MetricsPort,
                "must be 1-65535",
            ));
        }
        if reg.weight == 0 || reg.weight > MAX_WEIGHT {
            return Err(RegisterError::invalid(
                Field::Weight,
                format!("must be 1-{MAX_WEIGHT}, got {}", reg.weight),
            ));
        }
        let ip = addr.ip().to_canonical();
        self.fence(ip)?;
        Ok(Valid {
            id: reg.id.clone(),
            service: Arc::from(service),
            named_service: reg.service.is_some(),
            addr: SocketAddr::new(ip, addr.port()),
            metrics_port: reg.metrics_port,
            weight: reg.weight,
            protocol: reg.protocol,
        })
    }

    /// The service a request names, else the default one.
    pub fn service_of<'a>(&'a self, named: Option<&'a str>) -> Result<&'a str, RegisterError> {
        match named {
            Some(s) => validate_name(Field::Service, s).map(|()| s),
            None if self.default_service.is_empty() => Err(RegisterError::invalid(
                Field::Service,
                "required: this LB has no default service (lb.default_service is empty)",
            )),
            None => Ok(&self.default_service),
        }
    }

    /// The address fence: listed, and special classes only when a network
    /// naming that class lists them (not via a wide CIDR).
    fn fence(&self, ip: IpAddr) -> Result<(), RegisterError> {
        if !self.allowed_networks.iter().any(|n| n.contains(&ip)) {
            return Err(RegisterError::Unlisted { ip });
        }
        if is_special(ip)
            && !self
                .allowed_networks
                .iter()
                .any(|n| n.contains(&ip) && is_special(n.network()) && n.prefix_len() > 0)
        {
            return Err(RegisterError::Special { ip });
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
