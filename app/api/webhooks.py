from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ProjectDep, SessionDep, SettingsDep
from app.api.params import After, ResourceId
from app.api.spec import errors, links
from app.schemas.common import Deleted, ListPage
from app.schemas.webhooks import DeliveryPublic, WebhookCreate, WebhookCreated, WebhookPublic
from app.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=WebhookCreated, status_code=201, responses={
    201: links("webhook_id", "get_webhook", "delete_webhook", "list_deliveries")})
def create_webhook(body: WebhookCreate, session: SessionDep, settings: SettingsDep,
                   project_id: ProjectDep) -> WebhookCreated:
    endpoint = webhooks.create_endpoint(session, settings, project_id, body)
    return WebhookCreated(**WebhookPublic.of(endpoint).model_dump(), secret=endpoint.secret)


# 404: an `after` that names no webhook.
@router.get("", response_model=ListPage[WebhookPublic], responses=errors(404))
def list_webhooks(session: SessionDep, project_id: ProjectDep, after: After = None,
                  limit: Limit = 20) -> ListPage[WebhookPublic]:
    rows, has_more = webhooks.list_endpoints(session, project_id, after, limit)
    return ListPage.of([WebhookPublic.of(e) for e in rows], has_more)


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: ResourceId, session: SessionDep,
                project_id: ProjectDep) -> WebhookPublic:
    return WebhookPublic.of(webhooks.get_endpoint(session, project_id, webhook_id))


@router.delete("/{webhook_id}", response_model=Deleted)
def delete_webhook(webhook_id: ResourceId, session: SessionDep,
                   project_id: ProjectDep) -> Deleted:
    webhooks.delete_endpoint(session, project_id, webhook_id)
    return Deleted(id=webhook_id, object="webhook_endpoint")


@router.get("/{webhook_id}/deliveries", response_model=ListPage[DeliveryPublic])
def list_deliveries(webhook_id: ResourceId, session: SessionDep, project_id: ProjectDep,
                    after: After = None, limit: Limit = 20) -> ListPage[DeliveryPublic]:
    rows, has_more = webhooks.list_deliveries(session, project_id, webhook_id, after, limit)
    return ListPage.of([DeliveryPublic.of(d) for d in rows], has_more)
