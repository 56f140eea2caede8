"""The independent DLMS peer: a COSEM server built on the Gurux library (``gurux-dlms``).

The gateway's client is ``dlms-cosem``; the simulated meter is written on a different code base
(Gurux's server classes: HDLC and wrapper framing, AARQ/AARE, GET/SET/ACTION, ciphering), so that the
interop tests check the client against DLMS written elsewhere, not against itself.

``gurux-dlms`` 1.0.203's Python server is out of step with its own command handlers in a few places;
``PeerServer`` fills exactly those gaps and nothing else (no frame or APDU is built here):

- ``GXServerReply`` lacks the ``setReply``/``getConnectionInfo``/``getCount``/``setCount`` the server
  calls (``_Reply`` adds them);
- the handlers call ``notifyRead``/``notifyConnected``/``getTransaction``/``setTransaction`` on the
  server, and pass ``list(e)`` of a single ``ValueEventArgs`` to the action hooks (made iterable);
- the SET handler asks its parameters for ``isMultipleBlocks()``, which they keep as ``multipleBlocks``;
- ``handleSnrmRequest`` calls a missing ``GXHdlcSettings.update`` and the DISC reply reads parameters
  the HDLC setup object does not have: both UAs are built here with the same Gurux calls, from the
  negotiated settings (without this every HDLC conversation ended in a timeout on DISC);
- the RLRE's lengths do not match its content (the release then fails to parse): it is built here
  with the lengths right;
- the inactivity timer subtracts a datetime from an int: it is off (``inactivityTimeout = 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gurux_dlms import GXServerReply
from gurux_dlms._GXAPDU import _GXAPDU
from gurux_dlms._HDLCInfo import _HDLCInfo
from gurux_dlms.ConnectionState import ConnectionState
from gurux_dlms.enums import AccessMode, Authentication, InterfaceType, MethodAccessMode
from gurux_dlms.enums.SourceDiagnostic import SourceDiagnostic
from gurux_dlms.GXDLMS import GXDLMS
from gurux_dlms.GXDLMSLNParameters import GXDLMSLNParameters
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.objects import GXDLMSAssociationLogicalName, GXDLMSHdlcSetup, GXDLMSObject
from gurux_dlms.secure import GXDLMSSecureServer
from gurux_dlms.ValueEventArgs import ValueEventArgs

ValueEventArgs.__iter__ = lambda self: iter([self])
GXDLMSLNParameters.isMultipleBlocks = lambda self: bool(self.multipleBlocks)


class _Reply(GXServerReply):
    def setReply(self, value: Any) -> None:
        self.reply = value

    def getConnectionInfo(self) -> Any:
        return self.connectionInfo

    def getCount(self) -> int:
        return int(self.count)

    def setCount(self, value: int) -> None:
        self.count = value


Hook = Callable[[Any], None]


class PeerServer(GXDLMSSecureServer):
    """A Gurux logical-name server holding ``objects``; the model reacts through the hooks."""

    def __init__(
        self,
        objects: list[GXDLMSObject],
        *,
        hdlc: bool,
        physical: int | None = None,
        logical: int = 1,
        password: bytes | None = None,
        on_action: Hook | None = None,
        on_write: Hook | None = None,
        refuse: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(GXDLMSAssociationLogicalName(), InterfaceType.HDLC if hdlc else InterfaceType.WRAPPER)
        self.hdlc = GXDLMSHdlcSetup()
        self.hdlc.inactivityTimeout = 0
        self.physical = physical
        self.logical = logical
        self.password = password
        self.on_action = on_action
        self.on_write = on_write
        self.refuse = refuse
        association = GXDLMSAssociationLogicalName()
        self.items.append(association)
        for obj in objects:
            self.items.append(obj)
        for obj in list(self.items):
            association.objectList.append(obj)
        self.initialize()

    def answer(self, data: bytes) -> bytes:
        """Feed received bytes; the reply to send (empty while a frame is incomplete or not for us)."""
        sr = _Reply(bytes(data))
        self.handleRequest(sr)
        return bytes(sr.reply or b"")

    # -- the gaps of gurux-dlms 1.0.203 (see the module docstring) ----------------------------------
    def handleSnrmRequest(self, data: Any) -> None:
        h = self.settings.hdlc
        h._update(self.hdlc)
        GXDLMS.parseSnrmUaResponse(data, h)
        self.reset(True)
        self._ua_parameters()
        self.settings.connected = ConnectionState.HDLC

    def generateDisconnectRequest(self) -> None:
        self._ua_parameters()

    def _ua_parameters(self) -> None:
        h = self.settings.hdlc
        r = self.replyData
        r.setUInt8(0x81)
        r.setUInt8(0x80)
        r.setUInt8(0)
        r.setUInt8(_HDLCInfo.MAX_INFO_TX)
        GXDLMS.appendHdlcParameter(r, h.maxInfoTX)
        r.setUInt8(_HDLCInfo.MAX_INFO_RX)
        GXDLMS.appendHdlcParameter(r, h.maxInfoRX)
        r.setUInt8(_HDLCInfo.WINDOW_SIZE_TX)
        r.setUInt8(4)
        r.setUInt32(h.windowSizeTX)
        r.setUInt8(_HDLCInfo.WINDOW_SIZE_RX)
        r.setUInt8(4)
        r.setUInt32(h.windowSizeRX)
        r.setUInt8(2, len(r) - 3)

    def handleReleaseRequest(self, data: Any) -> None:
        if self.settings.interfaceType in (InterfaceType.HDLC, InterfaceType.HDLC_WITH_MODE_E):
            self.replyData.set(0, _GXCommon.LLC_REPLY_BYTES)
        info = _GXAPDU.getUserInformation(self.settings, self.settings.cipher)
        r = self.replyData
        # RLRE (IEC 62056-5-3, ACSE): reason normal (80 01 00), user-information (BE) holding an
        # octet string (04) with the xDLMS InitiateResponse; every length is the content's that follows.
        r.setUInt8(0x63)
        r.setUInt8(3 + 2 + 2 + len(info))
        r.setUInt8(0x80)
        r.setUInt8(0x01)
        r.setUInt8(0x00)
        r.setUInt8(0xBE)
        r.setUInt8(2 + len(info))
        r.setUInt8(0x04)
        r.setUInt8(len(info))
        r.set(info)

    def notifyRead(self, *args: Any) -> None:
        pass

    def notifyConnected(self, *args: Any) -> None:
        self.onConnected(*args)

    def getTransaction(self) -> Any:
        return self.transaction

    def setTransaction(self, value: Any) -> None:
        self.transaction = value

    # -- the abstract interface ---------------------------------------------------------------------
    def isTarget(self, server_address: int, client_address: int) -> bool:
        if self.physical is None:
            return bool(server_address == self.logical)
        # Gurux packs a two-byte HDLC server address as (upper << 7) | lower.
        return bool(server_address in (self.physical, (self.logical << 7) | self.physical))

    def onValidateAuthentication(self, authentication: Any, password: Any) -> Any:
        if self.refuse():
            return SourceDiagnostic.NOT_RECOGNISED
        if self.password is None:
            return SourceDiagnostic.NONE if authentication == Authentication.NONE else SourceDiagnostic.AUTHENTICATION_FAILURE
        if authentication == Authentication.LOW:
            ok = password is not None and bytes(password) == self.password
            return SourceDiagnostic.NONE if ok else SourceDiagnostic.AUTHENTICATION_FAILURE
        return SourceDiagnostic.AUTHENTICATION_REQUIRED if authentication == Authentication.NONE else SourceDiagnostic.NONE

    def onPreGet(self, args: Any) -> None:
        pass

    def onPostGet(self, args: Any) -> None:
        pass

    def onFindObject(self, object_type: Any, sn: Any, ln: Any) -> None:
        return None

    def onPreRead(self, args: Any) -> None:
        pass

    def onPostRead(self, *args: Any) -> None:
        pass

    def onPreWrite(self, args: Any) -> None:
        pass

    def onPostWrite(self, args: Any) -> None:
        if self.on_write is not None:
            for e in args:
                self.on_write(e)

    def onConnected(self, *args: Any) -> None:
        pass

    def onInvalidConnection(self, *args: Any) -> None:
        pass

    def onDisconnected(self, *args: Any) -> None:
        pass

    def onGetAttributeAccess(self, arg: Any) -> Any:
        return AccessMode.READ_WRITE

    def onGetMethodAccess(self, arg: Any) -> Any:
        return MethodAccessMode.ACCESS

    def onPreAction(self, args: Any) -> None:
        if self.on_action is not None:
            for e in args:
                self.on_action(e)

    def onPostAction(self, args: Any) -> None:
        pass
