<%-- The web application of tests/tomcat.rs: counts the requests of its HTTP session and prints
     one line: the node (-Dnode=...), the session id (ending in ".<jvmRoute>"), the count, and a
     link as Tomcat rewrites it for a client without cookies (";jsessionid=..."). --%><%@ page
    contentType="text/plain; charset=UTF-8" session="true" trimDirectiveWhitespaces="true" %><%
    Integer count = (Integer) session.getAttribute("count");
    count = count == null ? 1 : count + 1;
    session.setAttribute("count", count);
%>node=<%= System.getProperty("node") %> session=<%= session.getId() %> count=<%= count %> link=<%= response.encodeURL("index.jsp") %>
