from fastapi import APIRouter

from app.api.deps import AdminDep, SessionDep
from app.api.params import ResourceId
from app.api.spec import errors, links
from app.schemas.common import ListPage
from app.schemas.keys import KeyCreate, KeyCreated, KeyPublic
from app.services import keys

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], responses=errors(403))


@router.post("", response_model=KeyCreated, status_code=201,
             responses={201: links("key_id", "revoke_key")})
def create_key(body: KeyCreate, session: SessionDep, _: AdminDep) -> KeyCreated:
    record, key = keys.create_key(session, body.project, body.admin)
    return KeyCreated(**KeyPublic.of(record).model_dump(), key=key)


@router.get("", response_model=ListPage[KeyPublic])
def list_keys(session: SessionDep, _: AdminDep) -> ListPage[KeyPublic]:
    return ListPage.of([KeyPublic.of(k) for k in keys.list_keys(session)])


@router.delete("/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: ResourceId, session: SessionDep, _: AdminDep) -> KeyPublic:
    return KeyPublic.of(keys.revoke_key(session, key_id))
