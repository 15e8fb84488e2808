//! Plans and their entitlements: the catalogue read from configuration, each paid plan mapped to
//! the Stripe price that sells it.

use serde::Deserialize;

use crate::config::ConfigError;

/// Something a plan limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    ControlPlanes,
    Agents,
    Objects,
}

impl Resource {
    /// How the limit is named in errors and `extensions.limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::ControlPlanes => "control planes",
            Resource::Agents => "agents",
            Resource::Objects => "objects",
        }
    }
}

/// One plan. A limit of `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Plan {
    /// Stable id (`free`, `team`, ...), used in the API and stored per organisation.
    pub id: String,
    /// Name shown to people.
    pub name: String,
    pub control_planes: Option<u32>,
    pub agents: Option<u32>,
    pub objects: Option<u32>,
    /// The Stripe price a subscription to this plan uses; `None` for plans not sold (the free one).
    #[serde(default)]
    pub stripe_price: Option<String>,
}

impl Plan {
    pub fn limit(&self, resource: Resource) -> Option<u32> {
        match resource {
            Resource::ControlPlanes => self.control_planes,
            Resource::Agents => self.agents,
            Resource::Objects => self.objects,
        }
    }
}

/// The catalogue, in order from smallest to largest, and the plan every organisation without a
/// subscription has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans {
    plans: Vec<Plan>,
    default: usize,
}

impl Plans {
    /// Free (1 control plane, 1 agent, 25 objects), Team and Business, none priced yet.
    pub fn builtin() -> Plans {
        let plan = |id: &str, name: &str, cps, agents, objects| Plan {
            id: id.into(),
            name: name.into(),
            control_planes: Some(cps),
            agents: Some(agents),
            objects: Some(objects),
            stripe_price: None,
        };
        Plans {
            plans: vec![
                plan("free", "Free", 1, 1, 25),
                plan("team", "Team", 5, 10, 1_000),
                plan("business", "Business", 25, 100, 20_000),
            ],
            default: 0,
        }
    }

    /// The catalogue from `QLEET_PLANS` (a JSON list, smallest first) or the built-in one, with
    /// prices from `QLEET_STRIPE_PRICES` (`team=price_123,business=price_456`) and the default
    /// plan from `QLEET_DEFAULT_PLAN`.
    pub fn from_config(
        plans_json: Option<&str>,
        prices: Option<&str>,
        default: &str,
    ) -> Result<Plans, ConfigError> {
        let mut plans = match plans_json.filter(|s| !s.trim().is_empty()) {
            None => Plans::builtin().plans,
            Some(json) => serde_json::from_str::<Vec<Plan>>(json)
                .map_err(|e| ConfigError(format!("QLEET_PLANS is not valid: {e}")))?,
        };
        if plans.is_empty() {
            return Err(ConfigError("QLEET_PLANS lists no plan".into()));
        }
        for (i, p) in plans.iter().enumerate() {
            let ok = !p.id.is_empty()
                && p.id.len() <= 32
                && p.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(ConfigError(format!(
                    "plan id {:?} must be 1-32 of a-z, 0-9, -",
                    p.id
                )));
            }
            if plans[..i].iter().any(|q| q.id == p.id) {
                return Err(ConfigError(format!("plan {:?} is listed twice", p.id)));
            }
        }
        for pair in prices
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (id, price) = pair.split_once('=').ok_or_else(|| {
                ConfigError(format!(
                    "QLEET_STRIPE_PRICES: {pair:?} is not plan=price_id"
                ))
            })?;
            let plan = plans
                .iter_mut()
                .find(|p| p.id == id.trim())
                .ok_or_else(|| {
                    ConfigError(format!("QLEET_STRIPE_PRICES names unknown plan {id:?}"))
                })?;
            plan.stripe_price = Some(price.trim().to_owned());
        }
        let default = plans
            .iter()
            .position(|p| p.id == default)
            .ok_or_else(|| ConfigError(format!("QLEET_DEFAULT_PLAN {default:?} is not a plan")))?;
        Ok(Plans { plans, default })
    }

    pub fn all(&self) -> &[Plan] {
        &self.plans
    }

    pub fn default_plan(&self) -> &Plan {
        &self.plans[self.default]
    }

    pub fn get(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// The plan a Stripe price sells.
    pub fn by_price(&self, price: &str) -> Option<&Plan> {
        self.plans
            .iter()
            .find(|p| p.stripe_price.as_deref() == Some(price))
    }

    /// The smallest plan after `current` that allows more of `resource`.
    pub fn upgrade_for(&self, current: &Plan, resource: Resource) -> Option<&Plan> {
        let at = self.plans.iter().position(|p| p.id == current.id)?;
        let now = current.limit(resource)?;
        self.plans[at + 1..]
            .iter()
            .find(|p| p.limit(resource).is_none_or(|l| l > now))
    }

    /// Mutable access for tests and configuration tweaks.
    pub fn plan_mut(&mut self, id: &str) -> Option<&mut Plan> {
        self.plans.iter_mut().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_default_come_from_config() {
        let plans =
            Plans::from_config(None, Some("team=price_t, business=price_b"), "team").expect("ok");
        assert_eq!(plans.default_plan().id, "team");
        assert_eq!(
            plans.by_price("price_b").map(|p| p.id.as_str()),
            Some("business")
        );
        assert!(plans.by_price("price_x").is_none());
        assert!(Plans::from_config(None, Some("gold=price_g"), "free").is_err());
        assert!(Plans::from_config(None, Some("team"), "free").is_err());
        assert!(Plans::from_config(None, None, "platinum").is_err());
        assert!(Plans::from_config(Some("[]"), None, "free").is_err());
        assert!(Plans::from_config(Some("{"), None, "free").is_err());
    }

    #[test]
    fn the_upgrade_is_the_smallest_plan_that_lifts_the_limit() {
        let json = r#"[
            {"id":"free","name":"Free","control_planes":1,"agents":1,"objects":25},
            {"id":"more-objects","name":"M","control_planes":1,"agents":1,"objects":100},
            {"id":"big","name":"Big","control_planes":null,"agents":null,"objects":null}
        ]"#;
        let plans = Plans::from_config(Some(json), None, "free").expect("ok");
        let free = plans.get("free").expect("free");
        let id = |p: Option<&Plan>| p.map(|p| p.id.clone());
        assert_eq!(
            id(plans.upgrade_for(free, Resource::Objects)),
            Some("more-objects".into())
        );
        assert_eq!(
            id(plans.upgrade_for(free, Resource::ControlPlanes)),
            Some("big".into())
        );
        let big = plans.get("big").expect("big");
        assert_eq!(plans.upgrade_for(big, Resource::Agents), None);
    }
}
