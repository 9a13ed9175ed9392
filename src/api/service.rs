//! `/nacos/v1/ns/service*`: create, update, delete, get, list.

use super::validate::*;
use super::Action;
use crate::http::params::Params;
use crate::store::{Op, ServiceChange};

/// Largest page a service list returns.
const PAGE_SIZE_MAX: u64 = 10_000;

fn selector(p: &Params) -> Checked<Option<serde_json::Value>> {
    let Some(raw) = p.get("selector") else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|_| invalid("selector", raw, "not a JSON object"))?;
    match v.get("type").and_then(|t| t.as_str()) {
        Some(_) if v.is_object() => Ok(Some(v)),
        _ => Err(invalid("selector", raw, "needs a string field \"type\"")),
    }
}

fn change(p: &Params) -> Checked<ServiceChange> {
    Ok(ServiceChange {
        protect_threshold: opt_float(p, "protectThreshold", 0.0, 1.0)?,
        metadata: opt_metadata(p, "metadata")?,
        selector: selector(p)?,
    })
}

pub fn create(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let change = change(p)?;
    Ok(Action::Op(Op::CreateService { svc, change }, None))
}

pub fn update(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    let change = change(p)?;
    Ok(Action::Op(Op::UpdateService { svc, change }, None))
}

pub fn delete(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    Ok(Action::Op(Op::DeleteService { svc }, None))
}

pub fn get(p: &Params) -> Checked<Action> {
    let svc = service_id(p)?;
    Ok(Action::Op(Op::GetService { svc }, None))
}

pub fn list(p: &Params) -> Checked<Action> {
    let page_no = opt_u64(p, "pageNo", 1, u32::MAX as u64)?
        .ok_or_else(|| crate::reply::Reply::bad_request("Param 'pageNo' is required."))?;
    let page_size = opt_u64(p, "pageSize", 1, PAGE_SIZE_MAX)?
        .ok_or_else(|| crate::reply::Reply::bad_request("Param 'pageSize' is required."))?;
    let namespace = p
        .get("namespaceId")
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let group = p.get("groupName").unwrap_or(DEFAULT_GROUP).to_string();
    Ok(Action::ServiceList {
        namespace,
        group,
        page_no: page_no as usize,
        page_size: page_size as usize,
    })
}
