//! Objects, resourceVersions and the bounded event history: the part of etcd and the API
//! server's watch cache that the list/watch contract is written against.
//!
//! One global counter stamps every write, as etcd's revision does, so a list's
//! resourceVersion orders it against every event. The history keeps the last events (each
//! with the object before it, so that a watch with a selector can turn "stopped matching"
//! into `DELETED`, and so that a list can be served as of an older resourceVersion by
//! undoing later events). What fell out of the history is gone: a watch or a continued list
//! from before it gets 410 Expired, which is the case clients must handle by listing again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    /// Created.
    Added,
    /// Replaced.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    /// The watch event's `type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One write, as the history keeps it.
#[derive(Debug)]
pub(crate) struct Event {
    /// The resourceVersion the write was given.
    pub(crate) rv: u64,
    /// What happened.
    pub(crate) kind: EventType,
    /// The kind's registry index.
    pub(crate) resource: usize,
    /// The object's namespace (empty for cluster-scoped kinds).
    pub(crate) namespace: String,
    /// The object after the write (for a deletion, its last state stamped with `rv`).
    pub(crate) object: Arc<Value>,
    /// The object before the write (none for a creation).
    pub(crate) prev: Option<Arc<Value>>,
}

/// A resourceVersion older than the history reaches (410 Expired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    /// The oldest resourceVersion still served.
    pub(crate) oldest: u64,
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The object is malformed (no name, not an object).
    Invalid(String),
    /// A create found the object there (409 AlreadyExists).
    AlreadyExists,
    /// An update found no object (404).
    NotFound,
    /// An update's `metadata.resourceVersion` is not the current one (409 Conflict).
    Conflict,
}

/// How a write treats an object that is (or is not) there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PutMode {
    /// Create or replace, whatever is there (the test's `apply`).
    Apply,
    /// Create only (HTTP POST).
    Create,
    /// Replace only, checking `metadata.resourceVersion` when given (HTTP PUT).
    Update,
}

/// Where an object lives: kind index, namespace (empty if cluster-scoped), name. Ordered as
/// etcd's keys are, so lists come out by namespace, then name.
pub(crate) type Key = (usize, String, String);

/// The objects and their history.
#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The newest resourceVersion no longer in the history: a watch or list must start at
    /// or after it.
    floor: u64,
    uids: u64,
}

/// RFC 3339 in UTC, seconds precision, as `metadata.creationTimestamp` is written.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The object without what the server writes itself, to tell a real change from a no-op.
fn content(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    object
}

/// The object without metadata and status: what changes its generation.
fn spec(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    object
}

impl Store {
    /// An empty store keeping the last `capacity` events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            capacity,
            floor: 0,
            uids: 0,
        }
    }

    /// The current (global) resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    fn record(&mut self, event: Event) {
        self.history.push_back(Arc::new(event));
        while self.history.len() > self.capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
    }

    /// The object at `key`.
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// Writes `object` (of kind `resource`, whose scope is `namespaced`): stamps the
    /// metadata the server owns and records the event. A write that changes nothing is a
    /// no-op, as in the API server: no new resourceVersion, no event. Returns the stored
    /// object and the event type, if there was one.
    pub(crate) fn put(
        &mut self,
        resource: usize,
        namespaced: bool,
        mut object: Value,
        mode: PutMode,
    ) -> Result<(Arc<Value>, Option<EventType>), WriteError> {
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(WriteError::Invalid("metadata: Required value".into()));
        };
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => return Err(WriteError::Invalid("metadata.name: Required value".into())),
        };
        let namespace = if namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_owned();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let expected_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let key = (resource, namespace.clone(), name);
        let prev = self.objects.get(&key).cloned();
        match (mode, &prev) {
            (PutMode::Create, Some(_)) => return Err(WriteError::AlreadyExists),
            (PutMode::Update, None) => return Err(WriteError::NotFound),
            (PutMode::Update, Some(old)) => {
                let current = old["metadata"]["resourceVersion"].as_str();
                if expected_rv.is_some() && expected_rv.as_deref() != current {
                    return Err(WriteError::Conflict);
                }
            }
            _ => {}
        }
        if let Some(old) = &prev {
            if content(old) == content(&object) {
                return Ok((old.clone(), None));
            }
        }
        self.rv += 1;
        let meta = object["metadata"]
            .as_object_mut()
            .expect("metadata was checked to be an object");
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.remove("managedFields");
        let kind = match &prev {
            None => {
                self.uids += 1;
                let uid = format!("5c1ff000-0000-4000-8000-{:012x}", self.uids);
                meta.insert("uid".into(), json!(uid));
                meta.insert(
                    "creationTimestamp".into(),
                    json!(rfc3339(SystemTime::now())),
                );
                meta.insert("generation".into(), json!(1));
                EventType::Added
            }
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.into(), old["metadata"][field].clone());
                }
                let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
                let changed = spec(old) != spec(&object);
                let meta = object["metadata"]
                    .as_object_mut()
                    .expect("metadata was checked to be an object");
                meta.insert("generation".into(), json!(generation + u64::from(changed)));
                EventType::Modified
            }
        };
        let object = Arc::new(object);
        self.objects.insert(key, object.clone());
        self.record(Event {
            rv: self.rv,
            kind,
            resource,
            namespace,
            object: object.clone(),
            prev,
        });
        Ok((object, Some(kind)))
    }

    /// Deletes the object at `key`, returning its last state (stamped with the deletion's
    /// resourceVersion, as the `DELETED` event carries it).
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.record(Event {
            rv: self.rv,
            kind: EventType::Deleted,
            resource: key.0,
            namespace: key.1.clone(),
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// The objects of kind `resource` as they were at resourceVersion `at` (at most the
    /// current one), by namespace and name: the current ones with every later event of the
    /// kind undone.
    pub(crate) fn snapshot(
        &self,
        resource: usize,
        at: u64,
    ) -> Result<BTreeMap<(String, String), Arc<Value>>, Expired> {
        if at < self.floor {
            return Err(Expired { oldest: self.floor });
        }
        let start = (resource, String::new(), String::new());
        let mut objects: BTreeMap<(String, String), Arc<Value>> = self
            .objects
            .range(start..)
            .take_while(|((r, _, _), _)| *r == resource)
            .map(|((_, ns, name), o)| ((ns.clone(), name.clone()), o.clone()))
            .collect();
        for event in self.history.iter().rev().take_while(|e| e.rv > at) {
            if event.resource != resource {
                continue;
            }
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let key = (event.namespace.clone(), name);
            match &event.prev {
                None => {
                    objects.remove(&key);
                }
                Some(prev) => {
                    objects.insert(key, prev.clone());
                }
            }
        }
        Ok(objects)
    }

    /// Every event after resourceVersion `cursor`, oldest first, or [`Expired`] if some of
    /// them are no longer kept.
    pub(crate) fn events_after(&self, cursor: u64) -> Result<Vec<Arc<Event>>, Expired> {
        if cursor < self.floor {
            return Err(Expired { oldest: self.floor });
        }
        let from = self.history.partition_point(|e| e.rv <= cursor);
        Ok(self.history.range(from..).cloned().collect())
    }

    /// Forgets the history (a compaction): the resourceVersion stays, older ones expire.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// An API server restarted on a fresh history: the resourceVersion jumps by `jump` and
    /// everything before it is forgotten. Objects stay as they were.
    pub(crate) fn fresh_history(&mut self, jump: u64) {
        self.rv += jump;
        self.compact();
    }
}
