//! Host selection on the command line: `HOST` and `@TAG` arguments, none meaning every host.
//! A pure function over the fleet; unknown names fail listing what exists.

use super::{Fleet, FleetFileError, Host};

/// The hosts named by `args` (host names and `@tag`s), in name order, each once.
/// No arguments select every host.
pub fn select<'a>(fleet: &'a Fleet, args: &[String]) -> Result<Vec<&'a Host>, FleetFileError> {
    if fleet.hosts.is_empty() {
        return Err(FleetFileError::NoHosts {
            path: fleet.file.clone(),
        });
    }
    if args.is_empty() {
        return Ok(fleet.hosts.values().collect());
    }
    let mut chosen = std::collections::BTreeSet::new();
    for arg in args {
        if let Some(tag) = arg.strip_prefix('@') {
            let tagged: Vec<&str> = fleet
                .hosts
                .values()
                .filter(|h| h.tags.iter().any(|t| t == tag))
                .map(|h| h.name.as_str())
                .collect();
            if tagged.is_empty() {
                return Err(FleetFileError::UnknownTag {
                    path: fleet.file.clone(),
                    tag: tag.to_owned(),
                    known: list(fleet.tags().iter().map(|t| format!("@{t}"))),
                });
            }
            chosen.extend(tagged);
        } else if fleet.hosts.contains_key(arg) {
            chosen.insert(arg.as_str());
        } else {
            return Err(FleetFileError::UnknownHost {
                path: fleet.file.clone(),
                name: arg.clone(),
                known: list(fleet.hosts.keys().cloned()),
            });
        }
    }
    Ok(chosen
        .into_iter()
        .filter_map(|name| fleet.hosts.get(name))
        .collect())
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}
